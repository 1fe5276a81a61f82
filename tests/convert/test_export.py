import json

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.convert.export import export_float32
from tests.conftest import snapshot, to_input


def test_trained_16bit_model_saves_loads_and_exports_to_float32(tmp_path, trained_model, digits):
    (x, y), (xt, yt) = digits
    model16 = fp16cont.build_fp16_model(trained_model, precision="bfloat16")
    fp16cont.continue_training(model16, to_input(model16, x[:512]), y[:512], epochs=1, verbose=0)
    before = snapshot(model16)
    model32, check = export_float32(model16, return_report=True)
    assert snapshot(model16) == before
    assert all(str(v.dtype) == "float32" for v in model32.weights if "float" in str(v.dtype))
    for a, b in zip(model32.weights, model16.weights):
        assert np.array_equal(np.asarray(keras.ops.convert_to_numpy(a.value), np.float32),
                              np.asarray(keras.ops.convert_to_numpy(b.value), np.float32))
    assert check.argmax_agreement >= 0.9 and not hasattr(model32, "fp16cont_report")
    p16 = model16.predict(to_input(model16, xt), verbose=0).argmax(-1)
    p32 = model32.predict(to_input(model32, xt), verbose=0).argmax(-1)
    assert np.mean(p16 == p32) > 0.97
    if trained_model.name != "sub":  # subclassed configs do not carry sub-layer policies
        path = tmp_path / "m16.keras"
        model16.save(path)
        again = keras.saving.load_model(path)
        assert [str(v.dtype) for v in again.weights] == [str(v.dtype) for v in model16.weights]
        for a, b in zip(again.weights, model16.weights):
            assert np.asarray(keras.ops.convert_to_numpy(a.value)).tobytes() == np.asarray(keras.ops.convert_to_numpy(b.value)).tobytes()


def test_nested_rnn_model_exports_to_plain_float32(tmp_path):
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.Bidirectional(keras.layers.LSTM(8)),
                              keras.layers.Dense(3, activation="softmax")], name="birnn")
    model16 = fp16cont.build_fp16_model(model, precision="bfloat16")
    assert {str(v.dtype) for v in model16.get_layer(index=0).weights} == {"bfloat16"}
    model32, check = export_float32(model16, return_report=True)
    assert {str(v.dtype) for v in model32.weights} == {"float32"}
    assert "Float32Initializer" not in json.dumps(keras.saving.serialize_keras_object(model32), default=str)
    path = tmp_path / "m32.keras"
    model32.save(path)
    x = np.random.default_rng(0).standard_normal((4, 6, 4)).astype("float32")
    np.testing.assert_allclose(keras.saving.load_model(path)(x), model32(x), atol=1e-6)
    assert check.max_abs_diff < 0.05


def test_finite_outputs_that_differ_beyond_the_tolerance_are_a_mismatch_error():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(4)])
    model16 = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=None, verify=False)
    with pytest.raises(fp16cont.OutputMismatchError, match=r"tolerance 0\b.*Fix") as info:
        export_float32(model16, tolerance=0.0)  # bfloat16 compute rounds: finite, not equal
    assert not isinstance(info.value, fp16cont.NonFiniteOutputError)
