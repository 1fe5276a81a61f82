"""Compensated updates: plain 16-bit SGD stalls, Kahan and stochastic rounding track float32."""

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.optim.compensation import CompensatedOptimizer, default_compensation, rounding_key, stochastic_round
from fp16cont.errors import InvalidArgumentError
from fp16cont.numerics import numpy_dtype, ulp

STEPS = 300
LR = 1e-4


def _linear(units: int = 1) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(units, use_bias=False, kernel_initializer="ones")], name="linear"
    )
    return model


def _mean_output(y_true, y_pred):
    return keras.ops.mean(y_pred)


def _train(precision, compensation, units=1, momentum=0.0, steps=STEPS, seed=0):
    """Constant gradient 0.1 per weight: each SGD step should move w by lr * 0.1 = 1e-5."""
    source = _linear(units)
    model = source if precision == "float32" else fp16cont.build_fp16_model(
        source, precision=precision, keep_float32=None, verify=False
    )
    x = np.full((steps, 1), 0.1 * units, np.float32)  # d(mean(y))/dw = 0.1 for each of `units` outputs
    y = np.zeros((steps, units), np.float32)
    result = fp16cont.continue_training(
        model, x, y, epochs=1, batch_size=1, optimizer=keras.optimizers.SGD(LR, momentum=momentum),
        loss=_mean_output, compensation=compensation, loss_scaling=False, nan_guard=False, shuffle=False,
        seed=seed, verbose=0,
    )
    return np.asarray(keras.ops.convert_to_numpy(model.weights[0].value), np.float64).ravel(), result


def _float32_sgd(units=1, momentum=0.0, steps=STEPS):
    """The float32 trajectory of _train's problem, by Keras' SGD rule (m = momentum * m - lr * g; w += m)."""
    w, m = np.ones(units, np.float32), np.zeros(units, np.float32)
    for _ in range(steps):
        m = np.float32(momentum) * m - np.float32(LR) * np.float32(0.1)
        w = w + m
    return w.astype(np.float64)


def test_the_float32_reference_is_what_keras_float32_training_gives():
    w32, _ = _train("float32", None, units=4, momentum=0.9, steps=50)
    np.testing.assert_allclose(w32, _float32_sgd(4, 0.9, 50), rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_plain_float16_sgd_stalls_while_kahan_tracks_float32(momentum):
    w32 = _float32_sgd(momentum=momentum)
    w_plain, _ = _train("float16", None, momentum=momentum)
    w_kahan, result = _train("float16", "kahan", momentum=momentum)
    assert w32[0] < 1.0 - 2e-3  # float32 moved by about 300 * 1e-5
    assert w_plain[0] == 1.0  # every one of the 300 updates was below half an ulp
    # Kahan: within one float16 ulp (2**-11 just below 1.0) of the float32 trajectory
    assert abs(w_kahan[0] - w32[0]) <= 2.0**-11
    assert result.compensation == "kahan"


@pytest.mark.parametrize("precision, seed", [("bfloat16", 3), ("float16", 5)])
def test_plain_16bit_stalls_while_stochastic_rounding_tracks_in_expectation(precision, seed):
    units = 256
    w32 = _float32_sgd(units)
    w_plain, _ = _train(precision, None, units=units)
    w_sr, result = _train(precision, "stochastic", units=units, seed=seed)
    moved = 1.0 - w32.mean()
    assert moved > 2e-3
    assert np.all(w_plain == 1.0)
    # the mean over 256 independently rounded weights is within 15% of float32's step
    assert abs((1.0 - w_sr.mean()) - moved) < 0.15 * moved
    assert result.compensation == "stochastic"
    assert len(np.unique(w_sr)) > 1  # really random, not a fixed rounding
    again, _ = _train(precision, "stochastic", units=units, seed=seed)
    assert np.array_equal(again, w_sr)  # reproducible with the same seed


def test_kahan_bfloat16_adam_moves_where_keras_adam_does_not():
    # Keras computes Adam's bias correction in the variable dtype: in bfloat16,
    # beta_2 = 0.999 rounds to 1.0 and the step size becomes exactly zero.
    source = _linear(4)
    x = np.ones((64, 1), np.float32)
    y = np.zeros((64, 4), np.float32)
    results = {}
    for compensation in (None, "kahan"):
        model = fp16cont.build_fp16_model(source, precision="bfloat16", keep_float32=None, verify=False)
        fp16cont.continue_training(model, x, y, batch_size=8, optimizer=keras.optimizers.Adam(1e-3), loss=_mean_output,
                                   compensation=compensation, nan_guard=False, verbose=0)
        results[compensation] = np.asarray(keras.ops.convert_to_numpy(model.weights[0].value), np.float64)
    assert np.all(results[None] == 1.0)
    assert np.all(results["kahan"] < 0.995)  # 8 Adam steps of about 1e-3 each


def _per_parameter_bytes(result):
    """(weight + optimizer) bytes of the tensors with one value per parameter (scalars aside)."""
    model = result.model
    tensors = list(model.trainable_weights) + [v for v in model.optimizer.variables if len(v.shape)]
    from fp16cont.convert.rebuild import weight_bytes

    return weight_bytes(tensors) / result.parameters


def _built_bytes(precision, compensation, units=64):
    """(weight + optimizer) bytes per parameter of the optimizer chain for one Dense kernel, built, not trained."""
    variable = keras.Variable(np.ones((1, units), np.float32), dtype=precision)
    optimizer = keras.optimizers.SGD(LR, momentum=0.9)
    if compensation is not None:
        optimizer = CompensatedOptimizer(optimizer, compensation)
    optimizer.build([variable])
    from fp16cont.convert.rebuild import weight_bytes

    return weight_bytes([variable] + [v for v in optimizer.variables if len(v.shape)]) / units


def test_bytes_per_parameter_with_momentum_kahan_three_quarters_stochastic_half_of_float32():
    _, r16 = _train("bfloat16", "kahan", units=64, momentum=0.9, steps=4)
    assert _per_parameter_bytes(r16) == 6.0  # bfloat16 weight + momentum + Kahan buffer, as training counts it
    assert _built_bytes("float32", None) == 8.0  # float32 weight + float32 momentum
    assert _built_bytes("bfloat16", "kahan") == 6.0
    assert _built_bytes("bfloat16", "none") == 4.0  # 0.5x float32
    assert _built_bytes("bfloat16", "stochastic") == 4.0  # stochastic rounding keeps no buffer
    assert r16.weight_bytes == 2 * 64
    # the few scalars (step counters, learning rates, statistics) stay negligible
    assert r16.optimizer_bytes - 4 * 64 < 64


def test_float32_slots_on_request_and_safe_epsilon_for_float16():
    var = keras.Variable(np.ones(3, np.float32), dtype="float16")
    opt = CompensatedOptimizer(keras.optimizers.Adam(1e-3), "kahan", slot_dtype="float32")
    opt.build([var])
    assert {str(v.dtype) for v in opt.inner_optimizer.variables if len(v.shape)} == {"float32"}
    auto = CompensatedOptimizer(keras.optimizers.Adam(1e-3), "kahan")
    auto.build([keras.Variable(np.ones(3, np.float32), dtype="float16")])
    assert auto.inner_optimizer.epsilon == pytest.approx(2.0**-14)
    assert "epsilon raised" in auto.adjustments[0]


def test_compensated_optimizer_plugs_into_plain_compile(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    reference = fp16cont.build_fp16_model(source, precision="bfloat16", mode="mixed", verify=False)
    model = fp16cont.build_fp16_model(source, precision="bfloat16", keep_float32=None, verify=False)
    accuracy = {}
    for name, m, opt in [("float32", reference, keras.optimizers.SGD(0.1)),
                         ("bf16", model, CompensatedOptimizer(keras.optimizers.SGD(0.1), "kahan"))]:
        m.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        accuracy[name] = m.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0).history["accuracy"][-1]
    assert accuracy["bf16"] > 0.7
    assert abs(accuracy["bf16"] - accuracy["float32"]) < 0.03
    assert model.weights[0].dtype == "bfloat16"


@pytest.mark.parametrize("kwargs", [{"compensation": "fancy"}, {"slot_dtype": "float64"}])
def test_bad_compensation_settings(kwargs):
    with pytest.raises(InvalidArgumentError, match="Received"):
        CompensatedOptimizer(keras.optimizers.SGD(0.01), **kwargs)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_round_is_unbiased_and_picks_a_neighbour(dtype):
    rng = np.random.default_rng(0)
    # normal values of both formats over several binades and both signs, 64 copies of each
    base = (rng.uniform(0.5, 1.0, 64) * 2.0 ** rng.integers(-12, 12, 64) * rng.choice([-1, 1], 64)).astype(np.float32)
    x = np.repeat(base, 4096)
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(stochastic_round(x, dtype, rounding_key(1, 7)), "float32"))
    np_dtype = numpy_dtype(dtype)
    spacing = np.array([float(ulp(v, dtype)) for v in base]).repeat(4096)
    # each result is one of the two neighbours
    assert np.all(np.abs(rounded - x) < spacing)
    assert np.all(rounded.astype(np_dtype).astype(np.float32) == rounded)
    # the mean over 4096 roundings of one value is within 4 standard errors (at most 0.5/64 spacing)
    error = (rounded - x).reshape(64, 4096).mean(axis=1) / spacing[::4096]
    assert np.all(np.abs(error) < 4 * 0.5 / 64)
    assert len(np.unique(rounded)) > len(base)  # both neighbours occur


def test_stochastic_round_is_a_pure_function_of_key_and_keeps_specials():
    x = np.array([1.0 + 2.0**-10, np.nan, np.inf, -np.inf, 0.0, 3e38], np.float32)
    x = np.tile(x, 100)
    first = keras.ops.convert_to_numpy(keras.ops.cast(stochastic_round(x, "bfloat16", rounding_key(0, 3)), "float32"))
    again = keras.ops.convert_to_numpy(keras.ops.cast(stochastic_round(x, "bfloat16", rounding_key(0, 3)), "float32"))
    other = keras.ops.convert_to_numpy(keras.ops.cast(stochastic_round(x, "bfloat16", rounding_key(0, 4)), "float32"))
    assert np.array_equal(first, again, equal_nan=True)
    assert not np.array_equal(first, other, equal_nan=True)
    first = first.reshape(100, 6)
    assert np.all(np.isnan(first[:, 1])) and np.all(first[:, 2] == np.inf) and np.all(first[:, 3] == -np.inf)
    assert np.all(first[:, 4] == 0.0) and np.all(np.isfinite(first[:, 5]))
    f16 = keras.ops.convert_to_numpy(keras.ops.cast(stochastic_round(np.array([1e5, -1e5], np.float32), "float16",
                                                                      rounding_key(0, 0)), "float32"))
    assert np.all(np.isinf(f16))  # beyond float16's range: overflows as a cast does


def test_default_compensation_by_precision():
    assert default_compensation("bfloat16") == default_compensation("float16") == "stochastic"
    assert default_compensation("mixed_bfloat16") is None
    assert default_compensation("float32") is None


def test_the_learning_rate_set_on_the_chain_reaches_its_private_copy_only():
    # what ReduceLROnPlateau does; tests/test_no_mutation.py checks every attribute of the given optimizer
    given = keras.optimizers.SGD(0.01)
    opt = CompensatedOptimizer(given, "stochastic")
    opt.learning_rate = 0.125
    assert float(keras.ops.convert_to_numpy(opt.inner_optimizer.learning_rate)) == 0.125
    assert float(keras.ops.convert_to_numpy(given.learning_rate)) == pytest.approx(0.01)


def test_an_optimizer_built_for_other_variables_is_refused():
    user = keras.optimizers.SGD(0.01, momentum=0.9)
    user.build([keras.Variable(np.ones(3, np.float32))])
    opt = CompensatedOptimizer(user, "stochastic")
    with pytest.raises(InvalidArgumentError, match="built for other variables"):
        opt.build([keras.Variable(np.ones(5, np.float32), dtype="bfloat16")])


def test_stochastic_rounding_has_no_hidden_state_so_a_restored_run_rounds_the_same():
    grads = [np.full((64,), 1e-3, np.float32), np.full((64,), -2e-3, np.float32)]

    def fresh():
        var = keras.Variable(np.linspace(0.5, 1.5, 64).astype(np.float32), dtype="bfloat16")
        opt = CompensatedOptimizer(keras.optimizers.SGD(0.3, momentum=0.9), "stochastic", seed=11)
        opt.build([var])
        return var, opt

    def step(opt, grad, var):
        if keras.backend.backend() == "jax":
            new_vars, new_opt = opt.stateless_apply([v.value for v in opt.variables], [grad], [var.value])
            var.assign(new_vars[0])
            for v, value in zip(opt.variables, new_opt):
                v.assign(value)
        else:
            opt.apply([grad], [var])

    var_a, opt_a = fresh()
    for g in grads:
        step(opt_a, g, var_a)
    var_b, opt_b = fresh()
    step(opt_b, grads[0], var_b)
    var_c, opt_c = fresh()  # "resumed": weights and optimizer variables restored, nothing else
    var_c.assign(var_b.value)
    for target, value in zip(opt_c.variables, opt_b.variables):
        target.assign(value.value)
    step(opt_c, grads[1], var_c)
    a, c = (np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(v.value, "float32"))) for v in (var_a, var_c))
    assert np.array_equal(a, c)
    one_step = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(var_b.value, "float32")))
    assert not np.array_equal(a, one_step)


_EMBEDDING_CHILD = """
import numpy as np, keras, fp16cont
rng = np.random.default_rng(0)
x = rng.integers(0, 50, (200, 12)).astype("int32")
y = rng.integers(0, 2, (200, 1)).astype("float32")
inp = keras.Input((12,), dtype="int32")
h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(inp))
model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
model.compile(keras.optimizers.RMSprop(1e-3), "binary_crossentropy")
model16 = fp16cont.build_fp16_model(model, precision="bfloat16", verify=False)
fp16cont.continue_training(model16, x, y, epochs=3, batch_size=32, verbose=0)
"""


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the XLA-fused update is TensorFlow's")
def test_embedding_gradients_do_not_recompile_the_fused_update_every_step():
    """An ``Embedding``'s ``IndexedSlices`` gradient once made XLA compile the update at each of the 21 steps."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_VMODULE": "device_compiler=1", "TF_CPP_MIN_LOG_LEVEL": "0"}
    done = subprocess.run([sys.executable, "-c", _EMBEDDING_CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    compiles = done.stderr.count("Compilation of XLA executable")
    # 21 steps of 7 per epoch: one compile for the full batches and one for the last, smaller batch
    assert 1 <= compiles <= 3, compiles
