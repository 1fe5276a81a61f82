"""Every bad input gets a typed fp16cont error that names the problem and the fix; nothing is modified."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont import errors as E
from tests.conftest import dense_with_weight, snapshot, unrebuildable_model


@keras.saving.register_keras_serializable(package="fp16cont_bad")
class _Registered(keras.layers.Dense):
    pass


class _Unregistered(keras.layers.Dense):
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory, digits):
    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")], name="src")
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:256], y[:256], verbose=0)
    folder = tmp_path_factory.mktemp("bad")
    good = folder / "good.keras"
    model.save(good)
    truncated = folder / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[:300])
    text = folder / "notes.keras"
    text.write_text("not a model")
    unregistered = keras.Sequential([keras.Input((64,)), _Unregistered(4)], name="unreg")
    model16 = fp16cont.build_fp16_model(model, precision="bfloat16")
    return dict(model=model, model16=model16, x=x, y=y, xt=xt, yt=yt, folder=folder, truncated=truncated, text=text,
                unregistered=unregistered)


def _wrong_weights(env):
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    return fp16cont.quantize_weights(other, "bfloat16")


CASES = [
    # (id, call, error, words in the message)
    ("not a model", lambda e: fp16cont.build_fp16_model("just text"), E.InvalidSourceError, ["No file", "Fix"]),
    ("wrong type", lambda e: fp16cont.quantize_weights(3.14), E.InvalidSourceError, ["keras.Model", "Fix"]),
    ("missing path", lambda e: fp16cont.quantize_weights(e["folder"] / "none.keras"), E.InvalidSourceError, ["No file", "Fix"]),
    ("directory", lambda e: fp16cont.quantize_weights(e["folder"]), E.InvalidSourceError, ["directory", "Fix"]),
    ("truncated file", lambda e: fp16cont.quantize_weights(e["truncated"]), E.InvalidSourceError, ["complete model", "Fix"]),
    ("not a model file", lambda e: fp16cont.quantize_weights(e["text"]), E.InvalidSourceError, ["Fix"]),
    ("weights of another model", lambda e: fp16cont.build_fp16_model(e["model"], _wrong_weights(e)), E.WeightMismatchError, ["variables", "Fix"]),
    ("weights of the wrong type", lambda e: fp16cont.build_fp16_model(e["model"], [np.zeros(3)]), E.WeightMismatchError, ["quantize_weights", "Fix"]),
    ("weights of the wrong dtype", lambda e: fp16cont.quantize_weights([np.zeros(3, np.float16)]), E.AlreadyLowPrecisionError, ["16-bit", "Fix"]),
    ("NaN in source weights", lambda e: fp16cont.quantize_weights(dense_with_weight(np.nan), "bfloat16"), E.NonFiniteWeightsError, ["NaN", "Fix"]),
    ("beyond float16 range", lambda e: fp16cont.quantize_weights(dense_with_weight(1e6), "float16"), E.WeightOverflowError, ["bfloat16", "Fix"]),
    ("unknown precision", lambda e: fp16cont.build_fp16_model(e["model"], precision="fp8"), E.InvalidArgumentError, ["precision", "Fix"]),
    ("unknown mode", lambda e: fp16cont.build_fp16_model(e["model"], precision="bfloat16", mode="half"), E.InvalidArgumentError, ["mode", "Fix"]),
    ("already 16-bit", lambda e: fp16cont.build_fp16_model(e["model16"]), E.AlreadyLowPrecisionError, ["16-bit", "Fix"]),
    ("unbuilt model", lambda e: fp16cont.quantize_weights(keras.Sequential([keras.layers.Dense(2)])), E.ModelNotBuiltError, ["input shape", "Fix"]),
    ("subclassed without get_config", lambda e: fp16cont.build_fp16_model(unrebuildable_model(3), precision="bfloat16"), E.RebuildError, ["get_config", "Fix"]),
    ("unregistered custom layer", lambda e: fp16cont.build_fp16_model(e["unregistered"], precision="bfloat16"), E.RebuildError, ["register_keras_serializable", "Fix"]),
    ("input shape does not fit", lambda e: fp16cont.continue_training(e["model16"], e["x"].reshape(-1, 8, 8), e["y"]), E.DataError, ["shape", "Fix"]),
    ("input dtype not numeric", lambda e: fp16cont.continue_training(e["model16"], e["x"].astype(str), e["y"]), E.DataError, ["dtype", "Fix"]),
    ("labels out of range for the loss", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"] + 10), E.DataError, ["labels", "Fix"]),
    ("one-hot of the wrong width", lambda e: fp16cont.continue_training(e["model16"], e["x"], np.eye(12)[e["y"] % 12], loss="categorical_crossentropy"), E.DataError, ["one-hot", "Fix"]),
    ("empty data", lambda e: fp16cont.continue_training(e["model16"], e["x"][:0], e["y"][:0]), E.DataError, ["empty", "Fix"]),
    ("batch size zero", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"], batch_size=0), E.InvalidArgumentError, ["batch_size", "Fix"]),
    ("batch larger than data", lambda e: fp16cont.continue_training(e["model16"], e["x"][:50], e["y"][:50], batch_size=128), E.DataError, ["batch_size", "Fix"]),
    ("epochs zero", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"], epochs=0), E.InvalidArgumentError, ["epochs", "Fix"]),
    ("uncompiled and no loss", lambda e: fp16cont.continue_training(fp16cont.build_fp16_model(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)]), precision="bfloat16"), e["x"], e["y"]), E.MissingLossError, ["loss=", "Fix"]),
    ("unknown optimizer", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"], optimizer="adamx9"), E.InvalidArgumentError, ["optimizer", "Fix"]),
    ("validation_data of the wrong structure", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"], validation_data=(e["xt"],)), E.DataError, ["validation_data", "Fix"]),
    ("validation inputs of the wrong shape", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"], validation_data=(e["xt"][:, :10], e["yt"])), E.DataError, ["shape", "Fix"]),
    ("unknown compensation", lambda e: fp16cont.continue_training(e["model16"], e["x"], e["y"], compensation="magic"), E.InvalidArgumentError, ["compensation", "Fix"]),
    ("unknown on_overflow", lambda e: fp16cont.quantize_weights(e["model"], "bfloat16", on_overflow="clip"), E.InvalidArgumentError, ["on_overflow", "Fix"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_typed_error_naming_problem_and_fix(env, case):
    _, call, error, words = case
    before_model = snapshot(env["model"])
    before_model16 = [np.array(w).tobytes() for w in env["model16"].get_weights()]
    before_files = {p: p.read_bytes() for p in env["folder"].iterdir()}
    with pytest.raises(error) as info:
        call(env)
    assert isinstance(info.value, E.Fp16ContError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert snapshot(env["model"]) == before_model
    assert [np.array(w).tobytes() for w in env["model16"].get_weights()] == before_model16
    assert {p: p.read_bytes() for p in env["folder"].iterdir()} == before_files


def test_float16_on_a_slow_device_warns_not_errors():
    cpu = fp16cont.Device(kind="cpu", name="test-cpu-for-bad-inputs", cpu_bf16=True)
    with pytest.warns(fp16cont.PerformanceWarning, match="img/s"):
        assert fp16cont.select_precision("float16", cpu).precision == "float16"


def test_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20
