"""device_fit: fit's semantics with the data resident on the device (JAX backend).

Run with: KERAS_BACKEND=jax python -m pytest -q tests/test_device_loop.py
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.optim.compensation import CompensatedOptimizer
from fp16cont.training.device_loop import device_fit, upload
from fp16cont.errors import DataError, InvalidArgumentError, TrainingDivergedError, UnsupportedBackendError
from fp16cont.optim.loss_scale import DynamicLossScale
from tests.conftest import sequential_model, snapshot

# float16 on a CPU is slow, and build_fp16_model says so (once per process)
pytestmark = pytest.mark.filterwarnings("ignore::fp16cont.errors.PerformanceWarning")

ON_JAX = keras.backend.backend() == "jax"
jax_only = pytest.mark.skipif(
    not ON_JAX,
    reason=f"device_fit needs Keras' JAX backend (this run uses {keras.backend.backend()!r}); "
    "run with KERAS_BACKEND=jax",
)

# Same batch order, same jitted train_step: float32 results agree to rounding.
# On XLA:CPU they are bit-identical; the tolerance leaves room for fusion
# differences between a scan and single steps on other platforms.
RTOL, ATOL = 1e-5, 1e-6


def small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return sequential_model()


def compiled_copy(source: keras.Model) -> keras.Model:
    model = keras.models.clone_model(source)
    model.set_weights(source.get_weights())
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def as_float(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a).astype(np.float32) for a in arrays]


def assert_same_weights(a: keras.Model, b: keras.Model, rtol: float = RTOL, atol: float = ATOL) -> None:
    for wa, wb in zip(as_float(a.get_weights()), as_float(b.get_weights())):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def source(digits_module) -> keras.Model:
    """A float32 model trained one epoch: the source of every 16-bit model here."""
    (x, y), _ = digits_module
    model = small_model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=128, verbose=0)
    return model


@pytest.fixture(scope="module")
def digits_module():
    from fp16cont.bench.demo import load_digits

    return load_digits()


def test_other_backends_get_a_typed_error(monkeypatch, digits_module):
    (x, y), _ = digits_module
    model = small_model()
    if ON_JAX:
        monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(UnsupportedBackendError, match="JAX backend"):
        device_fit(model, x, y, loss="sparse_categorical_crossentropy")


@jax_only
def test_float32_matches_fit_with_the_same_batch_order(source, digits_module):
    (x, y), _ = digits_module
    a, b = compiled_copy(source), compiled_copy(source)
    history = a.fit(x, y, epochs=2, batch_size=128, shuffle=False, verbose=0).history
    # 1437 samples: 11 full batches of 128 and a partial one of 29, as in fit
    result = device_fit(b, x, y, epochs=2, batch_size=128, shuffle=False, steps_per_execution=4)
    history2, seconds = result  # unpacks like (history, epoch_seconds)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(history2[name], history[name], rtol=RTOL)
    assert_same_weights(a, b)
    assert int(b.optimizer.iterations.numpy()) == int(a.optimizer.iterations.numpy()) == 2 * 12


@jax_only
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_16bit_matches_continue_training_and_leaves_the_source_alone(source, digits_module, precision):
    (x, y), _ = digits_module
    before = snapshot(source)
    a = fp16cont.build_fp16_model(source, precision=precision)
    b = fp16cont.build_fp16_model(source, precision=precision)
    reference = fp16cont.continue_training(a, x, y, epochs=2, shuffle=False, verbose=0, stagnation=True)
    history, _ = device_fit(b, x, y, epochs=2, shuffle=False, steps_per_execution=5, stagnation=True)
    # the wrapped optimizers ran through stateless_apply
    inner = b.optimizer.inner_optimizer if precision == "float16" else b.optimizer
    assert isinstance(inner, CompensatedOptimizer) and inner.compensation == "stochastic"
    assert isinstance(b.optimizer, DynamicLossScale) == (precision == "float16")
    for name in ("loss", "accuracy", "cancelled_share", "lost_share"):
        np.testing.assert_allclose(history[name], reference.history.history[name], rtol=RTOL, atol=ATOL)
    # same 16-bit weights, and the same optimizer state (momentum, counters, loss scale)
    assert [str(v.dtype) for v in b.weights] == [str(v.dtype) for v in a.weights]
    assert_same_weights(a, b)
    for va, vb in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_allclose(as_float([va.numpy()])[0], as_float([vb.numpy()])[0], rtol=RTOL, atol=ATOL)
    if precision == "float16":
        assert history["loss_scale"][-1] == reference.loss_scale
        assert history["skipped_steps"] == [0.0, 0.0]
    assert snapshot(source) == before


@jax_only
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_learns_from_uint8_images_in_every_precision(source, digits_module, precision):
    (x, y), (xt, yt) = digits_module
    x8 = np.round(x * 255).astype(np.uint8)
    if precision == "float32":
        model = compiled_copy(small_model())  # fresh weights: there is something to learn
    else:
        model = fp16cont.build_fp16_model(compiled_copy(small_model()), precision=precision)
    start = model.get_weights()
    accuracy_before = model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
    history, seconds = device_fit(model, x8, y, epochs=4, steps_per_execution=4)
    assert len(seconds) == 4
    assert history["accuracy"][-1] > history["accuracy"][0] + 0.1
    assert history["loss"][-1] < history["loss"][0]
    # the trained values are in the Keras variables: evaluate and get_weights see them
    assert any(not np.array_equal(s, w) for s, w in zip(start, model.get_weights()))
    # (inference uses BatchNormalization's moving statistics, still settling after 48 steps)
    assert model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"] > max(0.6, accuracy_before + 0.3)


@jax_only
def test_cast_and_scale_on_the_device_equals_host_preprocessing(source, digits_module):
    (x, y), _ = digits_module
    x8 = np.round(x * 255).astype(np.uint8)
    a, b = compiled_copy(source), compiled_copy(source)
    device_fit(a, x8, y, epochs=1, shuffle_seed=3)  # uint8 resident, x / 255 per batch on the device
    device_fit(b, x8.astype(np.float32) * np.float32(1 / 255), y, epochs=1, shuffle_seed=3)
    assert_same_weights(a, b, rtol=0, atol=0)
    c = compiled_copy(source)
    device_fit(c, x8, y, epochs=1, shuffle_seed=3, preprocess=lambda batch: batch.astype("float32") * np.float32(1 / 255))
    assert_same_weights(a, c, rtol=0, atol=0)


@jax_only
def test_shuffle_is_a_seeded_permutation_per_epoch(source, digits_module):
    (x, y), _ = digits_module
    n = len(x)
    orders = [np.random.default_rng([7, epoch]).permutation(n) for epoch in range(2)]  # Engine.shuffle_seed
    a, b = compiled_copy(source), compiled_copy(source)
    for order in orders:  # fit on pre-permuted data, one epoch at a time
        a.fit(x[order], y[order], epochs=1, batch_size=128, shuffle=False, verbose=0)
    device_fit(b, x, y, epochs=2, shuffle_seed=7)
    assert_same_weights(a, b)
    c = compiled_copy(source)
    device_fit(c, x, y, epochs=2, shuffle_seed=8)
    assert any(not np.allclose(p, q) for p, q in zip(b.get_weights(), c.get_weights()))


@jax_only
def test_steps_per_execution_does_not_change_the_result(source, digits_module):
    (x, y), _ = digits_module
    data_x, data_y = upload(x), upload(y)  # uploaded once, used by both calls
    a, b = compiled_copy(source), compiled_copy(source)
    ha, _ = device_fit(a, data_x, data_y, epochs=2, steps_per_execution=1)
    hb, _ = device_fit(b, data_x, data_y, epochs=2, steps_per_execution=5)  # 2 chunks of 5, a tail of 1, the partial batch
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=RTOL)
    assert_same_weights(a, b)


@jax_only
def test_fit_continues_from_the_device_trained_state(source, digits_module):
    (x, y), _ = digits_module
    a, b = compiled_copy(source), compiled_copy(source)
    a.fit(x, y, epochs=2, batch_size=128, shuffle=False, verbose=0)
    device_fit(b, x, y, epochs=1, shuffle=False)
    b.fit(x, y, epochs=1, batch_size=128, shuffle=False, verbose=0)  # momentum and iterations carry over
    assert_same_weights(a, b)
    assert int(b.optimizer.iterations.numpy()) == 24
    device_fit(b, x, y, epochs=1, steps_per_epoch=3, shuffle=False)
    assert int(b.optimizer.iterations.numpy()) == 27


@jax_only
def test_divergence_restores_the_last_good_state(source, digits_module):
    (x, y), _ = digits_module
    model = compiled_copy(source)
    start = model.get_weights()
    bad = x.copy()
    bad[::20] = np.inf  # in every batch, in order: no finite step, so the start is the last good state
    with pytest.raises(TrainingDivergedError, match="4 times"):  # the guard of continue_training: 3 rollbacks
        device_fit(model, bad, y, epochs=6, shuffle=False, steps_per_execution=2, check_finite=False)
    for s, w in zip(start, model.get_weights()):
        np.testing.assert_array_equal(s, w)


@jax_only
def test_bad_arguments_get_typed_errors(source, digits_module):
    (x, y), _ = digits_module
    model = compiled_copy(source)
    with pytest.raises(InvalidArgumentError, match="steps_per_execution"):
        device_fit(model, x, y, steps_per_execution=0)
    with pytest.raises(InvalidArgumentError, match="epochs"):
        device_fit(model, x, y, epochs=0)
    with pytest.raises(DataError, match="samples"):
        device_fit(model, x, y[:-1])
    with pytest.raises(DataError, match="arrays"):
        device_fit(model, upload(x), [1, 2, 3])

