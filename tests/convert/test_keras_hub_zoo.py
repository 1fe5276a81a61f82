"""KerasHub language models beyond GPT-2 and BERT in pure bfloat16: build, train, LoRA.

Llama 3, Gemma, Mistral, Qwen 3, Phi-3 (causal LMs with their own RMS norm
layers) and a RoBERTa classifier, each built from tiny constructor arguments
with random weights (no presets, no network). For each model:

* the build: body variables bfloat16; the norm layers (KerasHub's own
  ``LlamaLayerNorm``, Gemma's ``RMSNormalization``, ...) and a classifier's
  ``logits`` head are the float32 islands; ``fp16cont.inspect`` says exactly
  what the variables are;
* ``continue_training`` on ``{"token_ids", "padding_mask"}`` arrays: finite
  loss that goes down on a repeated tiny batch, every body kernel moves and
  stays bfloat16;
* LoRA enabled after the build (float32 adapters re-created in bfloat16) and
  before it (carried over): only the adapters are trainable in the backbone;
  trained (Llama 3 and RoBERTa; every model with ``FP16CONT_ZOO=full``), the
  adapters move and the frozen weights do not.

Skips without ``keras_hub``. Runs on the TensorFlow and the JAX backends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.convert.architecture import child_layers, iter_layers
from fp16cont.convert.lora import prepare_lora

hub = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.filterwarnings("ignore::fp16cont.PerformanceWarning")  # bfloat16 on a CPU without it

VOCAB, SEQ, ROWS, CLASSES = 64, 8, 8, 3
DECODER = dict(vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
               intermediate_dim=32)


@dataclass(frozen=True)
class Case:
    """A KerasHub task: its backbone, its task class, and the norm class fp16cont must keep float32."""

    backbone: Callable[[], keras.Model]
    task: str
    norm: str  # class name of the normalization islands
    classifier: bool = False


CASES = {
    "llama3": Case(lambda: hub.models.Llama3Backbone(**DECODER), "Llama3CausalLM", "LlamaLayerNorm"),
    "gemma": Case(lambda: hub.models.GemmaBackbone(head_dim=8, **DECODER), "GemmaCausalLM", "RMSNormalization"),
    "mistral": Case(lambda: hub.models.MistralBackbone(**DECODER), "MistralCausalLM", "MistralLayerNormalization"),
    "qwen3": Case(lambda: hub.models.Qwen3Backbone(head_dim=8, **DECODER), "Qwen3CausalLM", "Qwen3LayerNorm"),
    "phi3": Case(lambda: hub.models.Phi3Backbone(**DECODER), "Phi3CausalLM", "Phi3LayerNorm"),
    "roberta": Case(
        lambda: hub.models.RobertaBackbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16,
                                           intermediate_dim=32, max_sequence_length=SEQ),
        "RobertaTextClassifier", "LayerNormalization", classifier=True,
    ),
}
NAMES = list(CASES)
# LoRA training (adapters move, nothing else does) compiles one more training
# step per model, 5-10 s each on two CPU cores; FP16CONT_ZOO=full trains all.
LORA_TRAINED = NAMES if os.environ.get("FP16CONT_ZOO") == "full" else ["llama3", "roberta"]


def task(name: str, lora: int | None = None) -> keras.Model:
    case = CASES[name]
    keras.utils.set_random_seed(0)
    backbone = case.backbone()
    extra = {"num_classes": CLASSES} if case.classifier else {}
    model = getattr(hub.models, case.task)(backbone=backbone, preprocessor=None, **extra)
    if lora:
        backbone.enable_lora(lora)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def batch(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    ids = np.random.default_rng(0).integers(1, VOCAB, (ROWS, SEQ + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((ROWS, SEQ), "int32")}
    return x, (np.arange(ROWS) % CLASSES if CASES[name].classifier else ids[:, 1:])


def values(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))) for v in model.weights}


def dtypes(variables) -> dict[str, str]:
    return {v.path: str(v.dtype) for v in variables}


def expected_dtype(path: str) -> str:
    return "float32" if "norm" in path or path.startswith("logits/") else "bfloat16"


def adapter(path: str) -> bool:
    return "lora_kernel" in path


def assert_report_is_true(model: keras.Model) -> Any:
    """``inspect`` against the variables themselves: no layer said 16-bit that holds float32, or the reverse."""
    report = fp16cont.inspect(model)
    assert set(report.float32_variables) == {v.path for v in model.weights if str(v.dtype) == "float32"}
    assert report.weight_bytes == sum(int(np.prod(v.shape)) * (4 if str(v.dtype) == "float32" else 2)
                                      for v in model.weights)
    policies = dict(report.layer_policies)
    leaves = [l for l in iter_layers(model) if not child_layers(l) and l.weights]
    assert leaves
    for layer in leaves:
        wanted = keras.DTypePolicy(policies[layer.path or layer.name]).variable_dtype
        assert {str(v.dtype) for v in layer.weights} == {wanted}, layer.path
    return report


@pytest.mark.parametrize("name", NAMES)
def test_build_body_bfloat16_norms_and_head_float32_and_inspect_agrees(name):
    source = task(name)
    m16, built = fp16cont.build_fp16_model(source, precision="bfloat16", return_report=True)
    kinds = dtypes(m16.weights)
    assert {p: expected_dtype(p) for p in kinds} == kinds
    assert any("norm" in p for p in kinds) and sum(d == "bfloat16" for d in kinds.values()) > len(kinds) / 2
    report = assert_report_is_true(m16)
    assert report.precision == "bfloat16" and report.mode == "pure"
    assert {(p, pol) for p, pol, _ in report.islands} == {(p, pol) for p, pol, _ in built.islands}
    by_path = {l.path or l.name: l for l in iter_layers(m16)}
    norms = {p for p, pol, why in report.islands if why.startswith("normalization")}
    assert norms and {type(by_path[p]).__name__ for p in norms} == {CASES[name].norm}
    assert all(pol == "mixed_bfloat16" for p, pol, _ in report.islands if p in norms)
    others = {p: (pol, why) for p, pol, why in report.islands if p not in norms}
    if CASES[name].classifier:
        assert others.pop("logits") == ("float32", "output layer")
    assert all(pol == "float32" and not by_path[p].weights for p, (pol, _) in others.items())  # float32 softmax
    assert all(str(v.dtype) == "float32" for v in source.weights)


@pytest.mark.parametrize("name", NAMES)
def test_continue_training_on_token_dicts_lowers_the_loss(name):
    m16 = fp16cont.build_fp16_model(task(name), precision="bfloat16")
    x, y = batch(name)
    before = values(m16)
    result = fp16cont.continue_training(m16, x, y, epochs=2, batch_size=4, verbose=0)
    after = values(m16)
    losses = result.history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result.precision == "bfloat16" and result.compensation == "stochastic"
    assert [p for p in before if np.array_equal(before[p], after[p])] == []  # body and float32 islands
    assert {p: expected_dtype(p) for p in before} == dtypes(m16.weights)


@pytest.mark.parametrize("name", NAMES)
def test_lora_after_build_makes_bfloat16_adapters_the_only_trainable_backbone_weights(name):
    m16 = fp16cont.build_fp16_model(task(name), precision="bfloat16")
    m16.backbone.enable_lora(2)  # Keras creates float32 adapters
    assert {str(v.dtype) for v in m16.backbone.trainable_weights if adapter(v.path)} == {"float32"}
    summary = prepare_lora(m16)  # what continue_training does first
    in_backbone = {id(v) for v in m16.backbone.weights}
    trainable = dtypes(v for v in m16.trainable_weights if id(v) in in_backbone)
    assert len(trainable) == 4 and all(adapter(p) for p in trainable) and set(trainable.values()) == {"bfloat16"}
    assert sorted(summary.converted) == sorted(trainable) and summary.adapter_dtype == "bfloat16"
    assert dict(summary.frozen_dtypes).keys() == {"bfloat16", "float32"}  # 16-bit body, float32 norm islands


@pytest.mark.parametrize("name", LORA_TRAINED)
def test_lora_adapters_train_alone_and_move(name):
    m16 = fp16cont.build_fp16_model(task(name), precision="bfloat16")
    m16.backbone.enable_lora(2)
    x, y = batch(name)
    before = values(m16)
    result = fp16cont.continue_training(m16, x, y, epochs=2, batch_size=4, verbose=0,
                                        optimizer=keras.optimizers.AdamW(5e-2))
    after = values(m16)
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    frozen = {v.path for v in m16.backbone.weights if not adapter(v.path)}
    adapters = {v.path for v in m16.backbone.weights if adapter(v.path)}
    assert adapters and adapters <= moved and not moved & frozen
    assert {str(v.dtype) for v in m16.backbone.trainable_weights} == {"bfloat16"}
    assert result.history.history["loss"][-1] < result.history.history["loss"][0]
    assert "adapter parameters train in bfloat16" in result.lora
    if CASES[name].classifier:  # the head outside the backbone keeps training, and says so
        assert {"logits/kernel", "pooled_dense/kernel"} <= moved and "other parameters also train" in result.lora


@pytest.mark.parametrize("name", NAMES)
def test_lora_before_build_carries_adapters_and_frozen_flags(name):
    source = task(name, lora=2)
    source_values = values(source)
    m16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    assert dtypes(m16.trainable_weights).keys() == dtypes(source.trainable_weights).keys()
    built = values(m16)
    for path, value in source_values.items():
        np.testing.assert_allclose(built[path], value, rtol=1e-2, atol=1e-6)
    summary = prepare_lora(m16)
    in_backbone = {id(v) for v in m16.backbone.weights}
    trainable = dtypes(v for v in m16.trainable_weights if id(v) in in_backbone)
    assert trainable and all(adapter(p) for p in trainable) and set(trainable.values()) == {"bfloat16"}
    assert summary.adapter_dtype == "bfloat16" and len(summary.layers) == 2 and summary.converted == ()
    assert all(str(v.dtype) == "float32" for v in source.weights)  # the source is untouched
