"""A zoo of real architectures, each taken through every step of fp16cont.

quantize -> build -> predict -> continue_training -> save/load, on random
weights and tiny shapes so that the whole zoo runs on a CPU in minutes, on
the TensorFlow and the JAX backends. Each model is checked for:

* the source model left untouched, bit for bit;
* a body really stored in 16-bit (values counted by dtype on the built
  model, and the report saying the same);
* outputs finite and as close to the float32 outputs as Keras' own
  mixed-precision copy allows (random deep networks amplify rounding, so the
  yardstick is relative to that copy, not an absolute threshold);
* one ``continue_training`` epoch with a finite loss;
* a ``.keras`` round trip that keeps every dtype and the predictions.

KerasHub models are built from tiny constructor arguments (no presets, no
network) and skip cleanly when ``keras_hub`` is not installed.

Compiling the training step of the five deep ``keras.applications`` networks
(hundreds of layers) takes one to two minutes each on two CPU cores, so their
``continue_training`` step runs only with ``FP16CONT_ZOO=full`` (so does GPT-2's, whose
training tests/convert/test_keras_hub_lm.py asserts on the same architecture); every other
step of every model always runs. ``FP16CONT_ZOO=light`` skips those five
altogether (CI's second backend, after the first ran them).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.convert.architecture import clone_with_policies
from fp16cont.convert.sources import variable_arrays
from fp16cont.convert.verify import probe_batch
from tests.conftest import snapshot

ROWS = 8
CLASSES = 3


def class_targets(model: keras.Model, x: Any) -> np.ndarray:
    return np.arange(ROWS) % CLASSES


@dataclass(frozen=True)
class Case:
    """One architecture: how to build it and what its targets look like."""

    build: Callable[[], keras.Model]
    targets: Callable[[keras.Model, Any], Any] = class_targets
    loss: Any = "sparse_categorical_crossentropy"
    min_16bit_share: float = 0.8
    deep: bool = False  # training step only with FP16CONT_ZOO=full
    trained_in: str | None = None  # its training step is asserted (and more) by this module instead


def token_targets(model: keras.Model, x: Any) -> np.ndarray:
    return np.asarray(x["token_ids"])


def multi_targets(model: keras.Model, x: Any) -> dict[str, np.ndarray]:
    return {"label": np.arange(ROWS) % CLASSES, "score": np.linspace(-1, 1, ROWS, dtype="float32")[:, None]}


def application(name: str, shape: tuple[int, int, int] = (32, 32, 3)) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        return getattr(keras.applications, name)(weights=None, input_shape=shape, classes=CLASSES)

    return build


def transformer_encoder() -> keras.Model:
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 16)(tokens)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    f = keras.layers.Dense(16)(keras.layers.Dense(32, activation="gelu")(h))
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(CLASSES, activation="softmax")(h), name="encoder")


def bidirectional_rnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((10, 6)),
            keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True)),
            keras.layers.Bidirectional(keras.layers.GRU(8)),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ],
        name="birnn",
    )


def time_distributed() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((5, 8, 8, 1)),
            keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, activation="relu")),
            keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D()),
            keras.layers.SimpleRNN(8),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ],
        name="timedist",
    )


def multi_io() -> keras.Model:
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((4,), name="meta")
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    h = keras.layers.Concatenate()([h, keras.layers.Dense(8, activation="relu")(meta)])
    h = keras.layers.BatchNormalization()(keras.layers.Dense(16, activation="relu")(h))
    label = keras.layers.Dense(CLASSES, activation="softmax", name="label")(h)
    score = keras.layers.Dense(1, name="score")(h)
    return keras.Model({"image": image, "meta": meta}, {"label": label, "score": score}, name="multi_io")


def _hub() -> Any:
    return pytest.importorskip("keras_hub")


def bert_classifier() -> keras.Model:
    hub = _hub()
    backbone = hub.models.BertBackbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16
    )
    return hub.models.BertTextClassifier(backbone=backbone, num_classes=CLASSES, preprocessor=None)


def gpt2_causal_lm() -> keras.Model:
    hub = _hub()
    backbone = hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16
    )
    return hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def vit_classifier() -> keras.Model:
    hub = _hub()
    backbone = hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    return hub.models.ViTImageClassifier(backbone=backbone, num_classes=CLASSES, preprocessor=None)


ZOO: dict[str, Case] = {
    "mobilenet_v2": Case(application("MobileNetV2"), deep=True),
    "efficientnet_b0": Case(application("EfficientNetB0"), deep=True),
    "densenet121": Case(application("DenseNet121"), deep=True),
    "convnext_tiny": Case(application("ConvNeXtTiny"), deep=True),
    "resnet50_v2": Case(application("ResNet50V2"), deep=True),
    "transformer_encoder": Case(transformer_encoder),
    "bidirectional_rnn": Case(bidirectional_rnn),
    "time_distributed": Case(time_distributed),
    "multi_io": Case(multi_io, multi_targets, {"label": "sparse_categorical_crossentropy", "score": "mse"}),
    "bert_classifier": Case(bert_classifier),
    # continue_training of a GPT2CausalLM on token dicts: finite and falling loss, bfloat16, every kernel moved
    "gpt2_causal_lm": Case(gpt2_causal_lm, token_targets, min_16bit_share=0.6,
                           trained_in="tests/convert/test_keras_hub_lm.py::test_dict_inputs_with_sample_weights_train_every_16bit_variable"),
    "vit_classifier": Case(vit_classifier),
}


@dataclass
class Built:
    """A zoo model, its 16-bit copy and what the build step recorded."""

    source: keras.Model
    model16: keras.Model
    x: Any
    before: dict
    after: dict


@pytest.fixture(scope="module", params=sorted(ZOO))
def built(request) -> tuple[str, Built]:
    name = request.param
    if ZOO[name].deep and os.environ.get("FP16CONT_ZOO") == "light":
        pytest.skip("deep keras.applications net: FP16CONT_ZOO=light leaves them to the other backend's run")
    keras.utils.set_random_seed(0)
    source = ZOO[name].build()
    x = probe_batch(source, rows=ROWS)
    before = snapshot(source)
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    return name, Built(source, model16, x, before, snapshot(source))


def outputs(model: keras.Model, x: Any) -> np.ndarray:
    out = keras.tree.flatten(model(x, training=False))
    return np.concatenate([np.asarray(keras.ops.convert_to_numpy(o), np.float32).ravel() for o in out])


def values_by_dtype(model: keras.Model) -> Counter:
    counts: Counter = Counter()
    for v in model.weights:
        counts[str(v.dtype)] += int(np.prod(v.shape))
    return counts


def test_source_model_is_untouched(built):
    _, b = built
    assert b.after == b.before


def test_body_is_really_16bit_and_the_report_says_so(built):
    name, b = built
    counts = values_by_dtype(b.model16)
    floats = {d: n for d, n in counts.items() if "float" in d}
    share = floats.get("bfloat16", 0) / sum(floats.values())
    assert share >= ZOO[name].min_16bit_share, floats
    report = fp16cont.inspect(b.model16)  # read back from the model itself
    assert report.sixteen_bit_share == pytest.approx(share)
    assert {d: n for d, _, n, _ in report.dtype_mix} == dict(counts)
    island_paths = {p for p, _, _ in report.islands}
    for layer in b.model16._flatten_layers(include_self=False):
        own = [v for v in layer.weights if str(v.dtype) == "float32"]
        if own and not list(layer._flatten_layers(include_self=False)):
            assert (layer.path or layer.name) in island_paths, (layer.path, own[0].path)


def test_outputs_are_finite_and_as_close_as_keras_mixed_precision(built):
    _, b = built
    mixed = clone_with_policies(b.source, lambda layer: "mixed_bfloat16")
    for variable, value in zip(mixed.weights, variable_arrays(b.source)):
        variable.assign(value)
    reference = outputs(b.source, b.x)
    pure = outputs(b.model16, b.x)
    keras_mixed = outputs(mixed, b.x)
    assert np.isfinite(pure).all()
    scale = np.linalg.norm(reference) + 1e-6
    err_pure = np.linalg.norm(pure - reference) / scale
    err_mixed = np.linalg.norm(keras_mixed - reference) / scale
    assert err_pure <= max(4 * err_mixed, 0.03), (err_pure, err_mixed)


def test_one_epoch_of_continued_training_is_finite(built):
    name, b = built
    case = ZOO[name]
    if case.deep and os.environ.get("FP16CONT_ZOO") != "full":
        pytest.skip("deep keras.applications net: its training step compiles for minutes on a CPU; FP16CONT_ZOO=full runs it")
    if case.trained_in and os.environ.get("FP16CONT_ZOO") != "full":
        pytest.skip(f"the same architecture's training step is asserted, with more, by {case.trained_in}")
    result = fp16cont.continue_training(
        b.model16, b.x, case.targets(b.model16, b.x), epochs=1, batch_size=ROWS, loss=case.loss, verbose=0
    )
    assert np.isfinite(result.history.history["loss"]).all()
    assert result.precision == "bfloat16"


def test_keras_file_round_trip_keeps_dtypes_and_predictions(built, tmp_path):
    _, b = built
    path = tmp_path / "model16.keras"
    b.model16.save(path)
    again = keras.saving.load_model(path, compile=False)
    assert [str(v.dtype) for v in again.weights] == [str(v.dtype) for v in b.model16.weights]
    np.testing.assert_allclose(outputs(again, b.x), outputs(b.model16, b.x), rtol=1e-5, atol=1e-5)
