import warnings

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.errors import (
    AlreadyLowPrecisionError,
    InvalidArgumentError,
    InvalidSourceError,
    ModelNotBuiltError,
    NonFiniteOutputError,
    RebuildError,
    WeightMismatchError,
)
from fp16cont._keras_compat import flatten_layers
from fp16cont.numerics import is_low_float
from fp16cont.convert.verify import probe_batch
from tests.conftest import MODEL_BUILDERS, snapshot, subclassed_model, to_input, unrebuildable_model


def island_layer_names(model):
    return {p.split("/")[-1] for p, pol in fp16cont.inspect(model).layer_policies if pol != "bfloat16"}


def test_every_model_kind_rebuilds_in_pure_bfloat16(trained_model, digits):
    before = snapshot(trained_model)
    model16, report = fp16cont.build_fp16_model(trained_model, precision="bfloat16", return_report=True)
    assert not hasattr(model16, "fp16cont_report")  # results are values, never attached
    seen = fp16cont.inspect(model16)  # the same facts, read back from the model
    assert (seen.precision, seen.mode, seen.layer_policies, seen.float32_variables, seen.dtype_mix) == (
        report.precision, report.mode, report.layer_policies, report.float32_variables, report.dtype_mix)
    assert [(p, pol) for p, pol, _ in seen.islands] == [(p, pol) for p, pol, _ in report.islands]
    declared = set(report.float32_variables)
    for v in model16.variables:
        if "float" not in str(v.dtype):
            continue
        if v.path in declared:
            assert v.dtype == "float32"
        else:
            assert v.dtype == "bfloat16", v.path
    # islands are only normalization and output layers
    for layer in flatten_layers(model16):
        if layer.weights and any(v.path in declared for v in layer.weights):
            is_norm = isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
            assert is_norm or layer.dtype_policy.name == "float32"
    assert report.verification is not None
    assert report.verification.argmax_agreement >= 0.9
    assert report.verification.max_abs_diff < 0.1
    assert snapshot(trained_model) == before  # before predict(), which adds Keras' own predict_function
    # the same predictions on real data
    (_, _), (xt, yt) = digits
    p32 = trained_model.predict(to_input(trained_model, xt), verbose=0).argmax(-1)
    p16 = model16.predict(to_input(model16, xt), verbose=0).argmax(-1)
    assert np.mean(p32 == p16) > 0.95


def test_sixteen_bit_variables_hold_the_quantized_values(trained_model):
    q = fp16cont.quantize_weights(trained_model, "bfloat16")
    model16 = fp16cont.build_fp16_model(trained_model, q)
    for variable, quantized, original in zip(model16.weights, q.arrays, trained_model.weights):
        value = np.asarray(keras.ops.convert_to_numpy(variable.value))
        if is_low_float(variable.dtype):
            assert value.tobytes() == quantized.tobytes()
        else:  # islands keep the exact float32 values
            assert value.tobytes() == np.asarray(keras.ops.convert_to_numpy(original.value)).tobytes()


def test_islands_batchnorm_mixed_and_output_float32():
    model = MODEL_BUILDERS["functional"]()
    model16 = fp16cont.build_fp16_model(model, precision="bfloat16")
    policies = {p: pol for p, pol in fp16cont.inspect(model16).layer_policies}
    bn = model16.get_layer(model.layers[2].name)
    assert isinstance(bn, keras.layers.BatchNormalization)
    assert bn.dtype_policy.name == "mixed_bfloat16"
    assert bn.moving_mean.dtype == "float32"
    assert model16.get_layer("probs").dtype_policy.name == "float32"
    assert model16.get_layer("probs").kernel.dtype == "float32"
    assert model16(np.zeros((2, 8, 8, 1), "float32")).dtype == "float32"
    assert "probs" in policies


def test_islands_are_configurable_by_class_and_pattern():
    model = MODEL_BUILDERS["functional"]()
    none = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=None)
    assert fp16cont.inspect(none).float32_variables == ()
    custom = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=(keras.layers.Conv2D, "prob*"))
    assert all(l.dtype_policy.name == "float32" for l in custom.layers if isinstance(l, keras.layers.Conv2D))
    assert custom.get_layer("probs").dtype_policy.name == "float32"
    bn = [l for l in custom.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    assert bn.dtype_policy.name == "bfloat16"  # not kept: "normalization" was not asked for
    with pytest.raises(InvalidArgumentError, match="keep_float32"):
        fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=(3,))


def test_mixed_mode_keeps_float32_variables_and_16bit_compute(trained_model):
    model = fp16cont.build_fp16_model(trained_model, precision="bfloat16", mode="mixed")
    assert all(v.dtype in ("float32", "int64", "int32", "uint32") or "int" in str(v.dtype) for v in model.weights)
    body = [l for l in flatten_layers(model) if l.weights]
    assert any(l.dtype_policy.name == "mixed_bfloat16" for l in body)
    for new, old in zip(model.weights, trained_model.weights):
        assert np.array_equal(keras.ops.convert_to_numpy(new.value), keras.ops.convert_to_numpy(old.value))


def test_overflowing_variables_stay_float32_with_keep_float32():
    model = MODEL_BUILDERS["sequential"]()
    big = model.layers[0].kernel.numpy()
    big[0, 0] = 1e6
    model.layers[0].kernel.assign(big)
    with pytest.raises(fp16cont.WeightOverflowError):
        fp16cont.quantize_weights(model, "float16")
    q = fp16cont.quantize_weights(model, "float16", on_overflow="keep_float32")
    model16 = fp16cont.build_fp16_model(model, q, verify=False)
    assert model16.layers[0].kernel.dtype == "float32"
    assert model16.layers[0].kernel.numpy()[0, 0] == 1e6


def test_globals_are_never_changed_even_on_error():
    before = (keras.config.floatx(), keras.config.dtype_policy().name)
    model = MODEL_BUILDERS["sequential"]()
    fp16cont.build_fp16_model(model, precision="bfloat16")
    with pytest.raises(InvalidArgumentError):
        fp16cont.build_fp16_model(model, precision="bfloat16", mode="half")
    assert (keras.config.floatx(), keras.config.dtype_policy().name) == before


def test_compiled_source_passes_loss_and_metrics_on(trained_model):
    model16 = fp16cont.build_fp16_model(trained_model, precision="bfloat16")
    assert model16.compiled
    assert model16.get_compile_config()["loss"] == trained_model.get_compile_config()["loss"]


def test_model_loaded_from_keras_file_and_path_argument(tmp_path, trained_model):
    path = tmp_path / "source.keras"
    trained_model.save(path)
    loaded = keras.saving.load_model(path)
    subclassed = trained_model.name == "sub"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_loaded = fp16cont.build_fp16_model(loaded, precision="bfloat16")
    lost = [w for w in caught if "come back in float32" in str(w.message)]
    assert len(lost) == (1 if subclassed else 0)  # only a subclassed model's config loses the layer dtypes
    from_path = fp16cont.build_fp16_model(path, precision="bfloat16")
    for a, b in zip(from_loaded.weights, from_path.weights):
        assert np.array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
    saved = tmp_path / "model16.keras"
    from_path.save(saved)
    again = keras.saving.load_model(saved)
    if subclassed:  # what the warning says happens, and the way back it names
        assert {str(v.dtype) for v in again.weights} == {"float32"}
        rebuilt = fp16cont.build_fp16_model(again, precision="bfloat16")
        assert [str(v.dtype) for v in rebuilt.weights] == [str(v.dtype) for v in from_path.weights]
        return
    assert [str(v.dtype) for v in again.weights] == [str(v.dtype) for v in from_path.weights]


def test_subclassed_model_warns_that_the_output_island_needs_a_name():
    model = subclassed_model()
    head = model.layers[-1].name
    with pytest.warns(UserWarning, match="'output' island"):
        default = fp16cont.build_fp16_model(model, precision="bfloat16", verify=False)
    assert str(default.layers[-1].kernel.dtype) == "bfloat16"  # what the warning says
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        named = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=("normalization", head), verify=False)
    assert not [w for w in caught if "'output' island" in str(w.message)]
    assert str(named.layers[-1].kernel.dtype) == "float32"


def test_unrebuildable_subclassed_model_names_get_config():
    model = unrebuildable_model()
    with pytest.raises(RebuildError, match="get_config"):
        fp16cont.build_fp16_model(model, precision="bfloat16")


def test_unbuilt_and_wrong_inputs():
    with pytest.raises(ModelNotBuiltError, match="input shape"):
        fp16cont.build_fp16_model(keras.Sequential([keras.layers.Dense(2)]), precision="bfloat16")
    with pytest.raises(fp16cont.SourceFileNotFoundError, match="No file"):
        fp16cont.build_fp16_model("nope.keras")
    with pytest.raises(InvalidSourceError):
        fp16cont.build_fp16_model(object())


def test_already_16bit_model_is_refused():
    model = MODEL_BUILDERS["sequential"]()
    model16 = fp16cont.build_fp16_model(model, precision="bfloat16")
    with pytest.raises(AlreadyLowPrecisionError, match="continue_training"):
        fp16cont.build_fp16_model(model16, precision="bfloat16")


def test_weights_of_another_model_or_precision_are_refused():
    a = MODEL_BUILDERS["sequential"]()
    b = MODEL_BUILDERS["nested"]()
    q = fp16cont.quantize_weights(b, "bfloat16")
    with pytest.raises(WeightMismatchError, match="quantize_weights"):
        fp16cont.build_fp16_model(a, q)
    with pytest.raises(WeightMismatchError):
        fp16cont.build_fp16_model(a, [np.zeros(1)])
    qa = fp16cont.quantize_weights(a, "bfloat16")
    with pytest.raises(InvalidArgumentError, match="precision"):
        fp16cont.build_fp16_model(a, qa, precision="float16")


def test_verification_raises_on_float16_activation_overflow():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(300.0)),
                              keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(300.0)),
                              keras.layers.Dense(2)])
    with pytest.raises(NonFiniteOutputError, match="bfloat16"):
        fp16cont.build_fp16_model(model, precision="float16", keep_float32=None)
    _, report = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=None, return_report=True)
    assert np.isfinite(report.verification.max_abs_diff)


def test_keep_float32_weights_from_a_file_fit_the_in_memory_model(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="mid"), keras.layers.Dense(2, name="head")])
    weights = model.get_weights()
    weights[0][0, 0] = 1e5
    model.set_weights(weights)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    q = fp16cont.quantize_weights(path, "float16", on_overflow="keep_float32", model=model)
    model16 = fp16cont.build_fp16_model(model, q)
    assert model16.get_layer("mid").kernel.dtype == "float32"
    assert model16.get_layer("mid").kernel.numpy()[0, 0] == 1e5


@keras.saving.register_keras_serializable(package="fp16cont_tests")
class FixedFloat32Scale(keras.layers.Layer):
    """A layer that creates its variable in float32 whatever its policy."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", dtype="float32", name="scale")

    def call(self, x):
        return x * keras.ops.cast(self.scale, x.dtype)


@keras.saving.register_keras_serializable(package="fp16cont_tests")
class StepCounter(keras.layers.Layer):
    """A layer with an integer variable next to a float one."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="steps")

    def call(self, x):
        return x * self.w


def values_by_dtype(model):
    counts = {}
    for v in model.weights:
        counts[str(v.dtype)] = counts.get(str(v.dtype), 0) + int(np.prod(v.shape))
    return counts


def wrapper_model():
    return keras.Sequential(
        [
            keras.Input((6, 4)),
            keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True)),
            keras.layers.TimeDistributed(keras.layers.Dense(5)),
            keras.layers.GRU(4),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ],
        name="wrappers",
    )


def test_wrapper_layers_and_default_rnn_initializers_rebuild_in_16bit():
    model = wrapper_model()
    before = snapshot(model)
    model16, report = fp16cont.build_fp16_model(model, precision="bfloat16", return_report=True)
    head = {v.path for v in model16.get_layer("head").weights}
    for v in model16.weights:
        assert str(v.dtype) == ("float32" if v.path in head else "bfloat16"), v.path
    assert dict((d, n) for d, _, n, _ in report.dtype_mix) == values_by_dtype(model16)
    assert report.sixteen_bit_share > 0.9
    assert [(p.split("/")[-1], why) for p, _, why in report.islands] == [("head", "output layer")]
    assert "bfloat16" in report.summary() and "head (float32: output layer)" in report.summary()
    assert snapshot(model) == before


def test_islands_by_path_pattern_inside_wrappers():
    model = wrapper_model()
    model16, report = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=("*forward_lstm*",),
                                                return_report=True)
    forward = [v for v in model16.weights if "forward_lstm" in v.path]
    backward = [v for v in model16.weights if "backward_lstm" in v.path]
    assert forward and all(v.dtype == "float32" for v in forward)
    assert backward and all(v.dtype == "bfloat16" for v in backward)
    assert any("forward_lstm" in p and "pattern" in why for p, _, why in report.islands)


def test_a_layer_that_fixes_float32_is_a_typed_error_naming_it_and_the_fix():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), FixedFloat32Scale(name="fixed"),
                              keras.layers.Dense(2)])
    with pytest.raises(RebuildError, match=r"fixed.*keep_float32=\(\.\.\., 'fixed'\)"):
        fp16cont.build_fp16_model(model, precision="bfloat16")
    model16, report = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=("output", "fixed"),
                                                return_report=True)
    assert model16.get_layer("fixed").scale.dtype == "float32"
    assert ("fixed", "float32", "keep_float32 pattern 'fixed'") in report.islands


def test_integer_variables_and_layers_already_mixed():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, dtype="mixed_bfloat16"), StepCounter(),
                              keras.layers.Dense(2)])
    model16 = fp16cont.build_fp16_model(model, precision="bfloat16")
    dtypes = {v.path.split("/")[-1]: str(v.dtype) for v in model16.weights}
    assert dtypes["steps"] == "int32" and dtypes["w"] == "bfloat16"
    assert model16.layers[0].kernel.dtype == "bfloat16"
    assert model16.layers[0].dtype_policy.name == "bfloat16"


def test_a_mostly_float32_result_warns_and_says_so():
    model = MODEL_BUILDERS["sequential"]()
    with pytest.warns(UserWarning, match=r"Only 5% .* bfloat16; the rest stay float32 .*dense.*Fix:"):
        model16 = fp16cont.build_fp16_model(model, precision="bfloat16", keep_float32=("dense*", "output"))
    report = fp16cont.inspect(model16)
    share = report.sixteen_bit_share
    assert share == values_by_dtype(model16)["bfloat16"] / sum(values_by_dtype(model16).values()) < 0.5
    assert f"{share:.1%} of floating-point values stored in 16-bit" in report.summary()


def test_dict_inputs_and_integer_tokens_are_verified():
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    h = keras.layers.Embedding(5, 8)(tokens) * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model({"token_ids": tokens, "padding_mask": mask}, out)
    batch = probe_batch(model, rows=4)
    assert set(batch) == {"token_ids", "padding_mask"}
    assert batch["token_ids"].max() < 2 and (batch["padding_mask"] == 1).all()
    _, report = fp16cont.build_fp16_model(model, precision="bfloat16", return_report=True)
    assert report.verification.max_abs_diff < 0.05
