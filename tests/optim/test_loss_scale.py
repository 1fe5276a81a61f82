"""Loss scaling for pure float16: learns where plain float16 underflows; floor, ceiling, skips."""

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.errors import InvalidArgumentError, LossScaleFloorError
from fp16cont.optim.loss_scale import DynamicLossScale

TINY = 1e-6  # the loss is scaled down by this and the learning rate up by 1/TINY: same SGD steps


def _tiny_loss(y_true, y_pred):
    return TINY * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def _fresh_float16(seed=0):
    keras.utils.set_random_seed(seed)
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                               keras.layers.Dense(10, activation="softmax")])
    return fp16cont.build_fp16_model(source, precision="float16", verify=False)


def test_underflowing_float16_gradients_learn_only_with_loss_scaling(digits):
    (x, y), (xt, yt) = digits
    accuracies, moved = {}, {}
    for scaling in (False, True):
        model = _fresh_float16()
        hidden_before = np.array(model.layers[0].kernel.numpy())
        fp16cont.continue_training(
            model, x, y, epochs=3, batch_size=64, optimizer=keras.optimizers.SGD(0.05 / TINY), loss=_tiny_loss,
            metrics=["accuracy"], loss_scaling=scaling, verbose=0,
        )
        moved[scaling] = not np.array_equal(hidden_before, model.layers[0].kernel.numpy())
        accuracies[scaling] = model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
    # without scaling every float16 gradient of the hidden layer flushes to zero
    assert not moved[False]
    assert moved[True]
    assert accuracies[True] > accuracies[False] + 0.1


def _step(opt, grads, var):
    """One optimizer step, the way the backend's trainer takes it."""
    if keras.backend.backend() != "jax":
        opt.apply(grads, [var])
        return
    new_vars, new_opt = opt.stateless_apply([v.value for v in opt.variables], grads, [var.value])
    var.assign(new_vars[0])
    for v, value in zip(opt.variables, new_opt):
        v.assign(value)


def test_scale_respects_floor_and_ceiling_and_counts_skips():
    var = keras.Variable(np.ones(2, np.float32), dtype="float16")
    opt = DynamicLossScale(keras.optimizers.SGD(0.01), initial_scale=4.0, dynamic_growth_steps=1, min_scale=2.0,
                           max_scale=8.0)
    opt.build([var])
    bad = [keras.ops.convert_to_tensor(np.array([np.inf, 1.0], np.float16))]
    good = [keras.ops.convert_to_tensor(np.array([1.0, 1.0], np.float16))]
    for _ in range(3):
        _step(opt, bad, var)
    assert float(opt.dynamic_scale.numpy()) == 2.0  # halved once, then held at the floor
    assert int(opt.skipped_steps.numpy()) == 3
    assert int(opt.floor_hits.numpy()) == 2
    for _ in range(5):
        _step(opt, good, var)
    assert float(opt.dynamic_scale.numpy()) == 8.0  # doubled every step, capped at the ceiling
    assert int(opt.floor_hits.numpy()) == 0


def test_scale_stuck_at_floor_is_a_typed_error_not_a_stall(digits):
    (x, y), _ = digits
    model = _fresh_float16()
    poisoned = np.full_like(x[:1600], np.nan)
    with pytest.raises(LossScaleFloorError, match="bfloat16"):
        fp16cont.continue_training(
            model, poisoned, y[:1600], batch_size=32, loss="sparse_categorical_crossentropy",
            loss_scale_options={"initial_scale": 4.0, "min_scale": 1.0}, check_finite=False, verbose=0,
        )  # check_finite=False: the up-front data check would refuse the NaN inputs before training
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_weights)


def test_skipped_steps_reported_in_training_result(digits):
    (x, y), _ = digits
    model = _fresh_float16()
    result = fp16cont.continue_training(model, x[:512], y[:512], batch_size=64, loss="sparse_categorical_crossentropy",
                                        loss_scale_options={"initial_scale": 2.0**24}, verbose=0)
    assert result.skipped_steps >= 1  # 2**24 overflows float16 gradients at first
    assert result.loss_scale < 2.0**24


@pytest.mark.parametrize("kwargs", [{"min_scale": 0.0}, {"initial_scale": 1e9}, {"dynamic_growth_steps": 0}])
def test_bad_loss_scale_settings(kwargs):
    with pytest.raises(InvalidArgumentError, match="min_scale"):
        DynamicLossScale(keras.optimizers.SGD(0.01), **kwargs)


def test_new_loss_scale_options_take_effect_on_a_second_call(digits):
    (x, y), _ = digits
    model = _fresh_float16()
    fp16cont.continue_training(model, x[:256], y[:256], batch_size=64, loss="sparse_categorical_crossentropy", verbose=0)
    options = {"initial_scale": 4.0, "min_scale": 2.0, "max_scale": 8.0, "dynamic_growth_steps": 7}
    fp16cont.continue_training(model, x[:256], y[:256], batch_size=64, loss_scale_options=options, verbose=0)
    assert (model.optimizer.initial_scale, model.optimizer.min_scale, model.optimizer.max_scale) == (4.0, 2.0, 8.0)
    with pytest.raises(InvalidArgumentError, match="min_scale"):
        fp16cont.continue_training(model, x[:256], y[:256], loss_scale_options={"initial_scale": 0.5}, verbose=0)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the branch-free step is JAX's stateless path")
def test_jax_step_checks_finiteness_once_for_all_variables():
    """The compiled loss-scaled step grows with the variables, not with their square, and skips as one."""
    import jax

    def program(count, scaled):
        variables = [keras.Variable(np.ones((16, 16), np.float32), dtype="float16" if i % 2 else "float32",
                                    name=f"w{i}") for i in range(count)]
        inner = fp16cont.optim.compensation.CompensatedOptimizer(keras.optimizers.SGD(0.01), "stochastic")
        opt = DynamicLossScale(inner) if scaled else inner
        opt.build(variables)
        grads = [keras.ops.ones((16, 16), v.dtype) for v in variables]
        step = jax.jit(opt.stateless_apply)
        args = ([v.value for v in opt.variables], grads, [v.value for v in variables])
        compiled = step.lower(*args).compile()
        return step, args, (len(compiled.as_text()), compiled.memory_analysis().temp_size_in_bytes)

    programs = {(n, s): program(n, s) for n in (8, 64) for s in (False, True)}
    sizes = {key: size for key, (_, _, (size, _)) in programs.items()}
    # what loss scaling adds per variable stays about the same from 8 to 64 variables
    assert sizes[64, True] - sizes[64, False] < 10 * (sizes[8, True] - sizes[8, False])
    # and the check holds no copy of the gradients (64 of 16x16: 48 KiB as float16/float32)
    assert programs[64, True][2][1] - programs[64, False][2][1] < 16 * 1024

    step, (opt_values, grads, values), _ = programs[64, True]
    grads[37] = keras.ops.convert_to_tensor(np.full((16, 16), np.inf), grads[37].dtype)  # one bad gradient of 64
    new_values, _ = step(opt_values, grads, values)
    assert all(np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(new_values, values))  # the whole step is skipped
