"""KerasHub language models in pure 16-bit: the build, dict inputs, LoRA (pure and mixed-precision).

Tiny real KerasHub models (random weights, no presets, no network); each
training test runs one short ``continue_training``. Skips without ``keras_hub``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fp16cont

hub = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.filterwarnings("ignore::fp16cont.PerformanceWarning")  # bfloat16 on a CPU without it

VOCAB, SEQ, ROWS = 64, 8, 16


def gpt2(lora: int | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16,
                                       intermediate_dim=32, dropout=0.0, max_sequence_length=SEQ)
    model = hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    if lora:
        backbone.enable_lora(lora)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def tokens() -> tuple[dict[str, np.ndarray], np.ndarray]:
    ids = np.random.default_rng(0).integers(1, VOCAB, (ROWS, SEQ + 1)).astype("int32")
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((ROWS, SEQ), "int32")}, ids[:, 1:]


def values(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))) for v in model.weights}


def dtypes(variables) -> dict[str, str]:
    return {v.path: str(v.dtype) for v in variables}


def adapter(path: str) -> bool:
    return "lora_kernel" in path


# The build is the same on every backend: its structure is asserted in the TensorFlow phase; the JAX phase
# runs the training tests below, whose builds verify on JAX.
tensorflow_phase = pytest.mark.skipif(keras.backend.backend() == "jax", reason="backend-independent build, asserted on TensorFlow")


@tensorflow_phase
def test_causal_lm_body_and_tied_embedding_are_16bit_norms_float32():
    m16 = fp16cont.build_fp16_model(gpt2(), precision="bfloat16")
    kinds = dtypes(m16.weights)
    assert kinds["token_embedding/embeddings"] == "bfloat16"  # tied input/output table: 16-bit by measurement
    for path, dtype in kinds.items():
        expected = "float32" if "layer_norm" in path else "bfloat16"
        assert dtype == expected, path
    report = fp16cont.inspect(m16)
    assert report.sixteen_bit_share > 0.95
    assert all("norm" in path for path, _, _ in report.islands)


@tensorflow_phase
def test_classifier_head_and_norms_float32_body_16bit():
    keras.utils.set_random_seed(0)
    backbone = hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16,
                                       intermediate_dim=32, max_sequence_length=SEQ)
    classifier = hub.models.BertTextClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    m16 = fp16cont.build_fp16_model(classifier, precision="bfloat16")
    kinds = dtypes(m16.weights)
    head = [p for p in kinds if p.startswith("logits/")]
    assert head and all(kinds[p] == "float32" for p in head)
    assert kinds["token_embedding/embeddings"] == "bfloat16"
    assert all(d == "float32" for p, d in kinds.items() if "norm" in p)
    assert sum(d == "bfloat16" for d in kinds.values()) > len(kinds) / 2


def test_dict_inputs_with_sample_weights_train_every_16bit_variable():
    source = gpt2()
    m16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    x, y = tokens()
    before = values(m16)
    weights = np.ones(y.shape, "float32")
    weights[:, -2:] = 0.0  # padded targets, as a CausalLM preprocessor's sample weights mark them
    result = fp16cont.continue_training(m16, x, y, epochs=3, batch_size=8, verbose=0, sample_weight=weights)
    after = values(m16)
    losses = result.history.history["loss"]
    assert result.precision == "bfloat16" and result.compensation == "stochastic"
    assert losses[-1] < losses[0]
    assert all(not np.array_equal(before[p], after[p]) for p in before if "kernel" in p)
    assert result.lora is None


def test_lora_after_build_trains_bfloat16_adapters_only():
    m16 = fp16cont.build_fp16_model(gpt2(), precision="bfloat16")
    m16.backbone.enable_lora(2)  # Keras makes float32 adapters; pure LoRA makes them bfloat16
    x, y = tokens()
    before = values(m16)
    result = fp16cont.continue_training(m16, x, y, epochs=3, batch_size=8, verbose=0)
    after = values(m16)
    trainable = dtypes(m16.trainable_weights)
    assert trainable and all(adapter(p) for p in trainable)
    assert set(trainable.values()) == {"bfloat16"}
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    assert moved and all(adapter(p) for p in moved)
    assert any(p.endswith("lora_kernel_b") for p in moved)  # B starts at zero
    assert result.history.history["loss"][-1] < result.history.history["loss"][0]
    assert result.precision == "bfloat16" and result.compensation == "stochastic"
    assert "adapter parameters train in bfloat16" in result.lora and "froze 2 bias" in result.lora


def test_lora_before_build_keeps_adapters_and_frozen_flags():
    source = gpt2(lora=2)
    source_values = values(source)
    m16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    trainable = dtypes(m16.trainable_weights)
    assert dtypes(source.trainable_weights).keys() == trainable.keys()
    assert {d for p, d in trainable.items() if adapter(p)} == {"bfloat16"}
    built = values(m16)
    for path, value in source_values.items():
        np.testing.assert_allclose(built[path], value, rtol=1e-2, atol=1e-6)
    assert all(str(v.dtype) == "float32" for v in source.weights)  # the source is untouched


def test_mixed_precision_lora_keeps_float32_adapters():
    m16 = fp16cont.build_fp16_model(gpt2(), precision="bfloat16")
    m16.backbone.enable_lora(2)
    x, y = tokens()
    before = values(m16)
    result = fp16cont.continue_training(m16, x, y, epochs=2, batch_size=8, verbose=0, lora_precision="float32")
    trainable = dtypes(m16.trainable_weights)
    assert set(trainable.values()) == {"float32"} and all(adapter(p) for p in trainable)
    frozen = [v for v in m16.non_trainable_weights if "kernel" in v.path and "lora" not in v.path]
    assert frozen and all(str(v.dtype) == "bfloat16" for v in frozen)
    after = values(m16)
    assert any(not np.array_equal(before[p], after[p]) for p in trainable)
    assert result.precision == "mixed_bfloat16"
    assert "adapter parameters train in float32" in result.lora


@pytest.mark.parametrize("bad", ["float8", "bfloat16", 32])
def test_bad_lora_precision_is_a_typed_error(bad):
    m16 = fp16cont.build_fp16_model(gpt2(lora=2), precision="bfloat16")
    x, y = tokens()
    with pytest.raises(fp16cont.InvalidArgumentError, match="lora_precision"):
        fp16cont.continue_training(m16, x, y, epochs=1, verbose=0, lora_precision=bad)


def test_float32_lora_precision_without_lora_is_a_typed_error():
    m16 = fp16cont.build_fp16_model(gpt2(), precision="bfloat16")
    x, y = tokens()
    with pytest.raises(fp16cont.InvalidArgumentError, match="no LoRA-enabled layer"):
        fp16cont.continue_training(m16, x, y, epochs=1, verbose=0, lora_precision="float32")


def test_preprocessed_tf_data_pipeline_trains():
    tf = pytest.importorskip("tensorflow")
    m16 = fp16cont.build_fp16_model(gpt2(), precision="bfloat16")
    x, y = tokens()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    before = values(m16)
    result = fp16cont.continue_training(m16, dataset, epochs=1, verbose=0)
    after = values(m16)
    assert np.isfinite(result.history.history["loss"][-1])
    assert any(not np.array_equal(before[p], after[p]) for p in before)
