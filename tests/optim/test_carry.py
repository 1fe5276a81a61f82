"""Optimizer state (momentum, moments, iterations) carries over from the float32 source."""

import keras
import pytest

import fp16cont
from fp16cont.optim.carry import carry_optimizer_state, innermost_optimizer
from fp16cont.errors import InvalidArgumentError
from tests.conftest import snapshot


def _trained(optimizer, digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=128, verbose=0)
    return model


@pytest.mark.parametrize("make", [lambda: keras.optimizers.SGD(0.01, momentum=0.9), lambda: keras.optimizers.Adam(1e-3)])
def test_state_is_cast_and_loaded(make, digits):
    (x, y), _ = digits
    source = _trained(make(), digits)
    before = snapshot(source)
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    result = fp16cont.continue_training(model16, x[:128], y[:128], epochs=1, initial_optimizer_state=source,
                                        verbose=0)
    report = result.optimizer_state
    assert report is not None and report.ok
    inner = innermost_optimizer(model16.optimizer)
    assert int(inner.iterations.numpy()) == int(source.optimizer.iterations.numpy()) + 1
    slots = [a for a in report.variables if not a.passed_through]
    assert slots and all(a.max_rel_error <= 2.0**-8 for a in slots)
    assert snapshot(source) == before


def test_state_from_another_optimizer_class_is_refused(digits):
    source = _trained(keras.optimizers.Adam(1e-3), digits)
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    model16.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    with pytest.raises(InvalidArgumentError, match="Adam"):
        carry_optimizer_state(source, model16)


def test_state_from_a_learning_rate_schedule_carries_to_a_constant_rate(digits):
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=10, decay_rate=0.9)
    source = _trained(keras.optimizers.Adam(schedule), digits)
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    model16.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    report = carry_optimizer_state(source, model16)
    assert report.ok and any(not a.passed_through for a in report.variables)
    assert int(innermost_optimizer(model16.optimizer).iterations.numpy()) == int(source.optimizer.iterations.numpy())


def test_wrappers_record_what_they_copied_without_holding_it():
    from fp16cont.optim.carry import made_from
    from fp16cont.optim.compensation import CompensatedOptimizer
    from fp16cont.optim.loss_scale import DynamicLossScale

    given = keras.optimizers.Adam(1e-3)
    chain = DynamicLossScale(CompensatedOptimizer(given, "stochastic"))
    assert made_from(chain, given)
    assert made_from(chain, innermost_optimizer(chain))
    assert not made_from(chain, keras.optimizers.Adam(1e-3))
    assert innermost_optimizer(chain) is not given
