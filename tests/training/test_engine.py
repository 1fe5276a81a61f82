"""The training engine behind continue_training: every mode gives fit's result and keeps fit's contract."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.optim.carry import innermost_optimizer
from fp16cont.training.engine import Engine, choose_engine
from fp16cont.errors import InvalidArgumentError, TrainingDivergedError

JAX = keras.backend.backend() == "jax"
jax_only = pytest.mark.skipif(not JAX, reason="the resident and streamed modes run on Keras' JAX backend")


def _model(seed: int = 1, width: int = 32) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _same_weights(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.max(np.abs(np.asarray(u, np.float32) - np.asarray(v, np.float32))))
               for u, v in zip(a.get_weights(), b.get_weights()))


def test_engine_arguments_are_checked():
    with pytest.raises(InvalidArgumentError, match="engine"):
        Engine("fastest")
    with pytest.raises(InvalidArgumentError, match="steps_per_execution"):
        Engine(steps_per_execution=0)
    with pytest.raises(InvalidArgumentError, match="engine"):
        fp16cont.continue_training(_model(), np.zeros((8, 64), "float32"), np.zeros(8, "int32"), engine=3, verbose=0)


def test_fit_is_chosen_off_jax_and_forcing_another_mode_is_a_typed_error(digits):
    (x, y), _ = digits
    if JAX:
        assert choose_engine(Engine(), x, {}).mode == "resident"
        assert choose_engine(Engine(), x, {"unknown_fit_argument": 1}).mode == "fit"
        return
    choice = choose_engine(Engine(), x, {})
    assert choice.mode == "compiled"  # TensorFlow's own fast mode (tests/training/test_engine_tf.py)
    with pytest.raises(InvalidArgumentError, match="engine='resident' cannot run here"):
        fp16cont.continue_training(_model(), x, y, engine="resident", verbose=0)


def test_convolution_search_only_on_cuda_without_a_determinism_request():
    from fp16cont.reporting.results import EngineChoice
    from fp16cont.training.engine import convolution_search, tuned_convolutions

    assert convolution_search("torch", "cuda", False) and convolution_search("torch", "cuda:1", False)
    assert not convolution_search("torch", "cuda", True)  # torch.use_deterministic_algorithms(True) wins
    assert not convolution_search("torch", "cpu", False)
    assert not convolution_search("jax", "cuda", False) and not convolution_search("tensorflow", "cuda", False)
    assert not choose_engine(Engine(), np.zeros((8, 64), "float32"), {}).convolution_search  # not torch with CUDA here
    with tuned_convolutions(EngineChoice("fit", 1, "engine='fit' was asked for")):
        pass  # nothing to switch: no torch needed


def test_shared_switch_is_on_while_any_call_runs_and_then_restored():
    import threading

    from fp16cont.training.engine import SharedSwitch

    box = {"on": False}
    switch = SharedSwitch(lambda: box["on"], lambda v: box.update(on=v))
    with switch:
        assert box["on"] is True
        with switch:  # nested
            assert box["on"] is True
        assert box["on"] is True  # still on for the outer call
    assert box["on"] is False
    with pytest.raises(RuntimeError), switch:
        raise RuntimeError("a failing fit")
    assert box["on"] is False  # restored after a failure too
    box["on"] = True  # the user's own setting is given back as it was
    with switch:
        pass
    assert box["on"] is True
    box["on"] = False
    with switch:
        box["on"] = False  # turned off by someone during the call: kept off
    assert box["on"] is False

    inside, release, errors = threading.Barrier(3, timeout=30), threading.Event(), []

    def call():
        try:
            with switch:
                inside.wait()
                release.wait(30)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        inside.wait()
        assert box["on"] is True  # both calls inside
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert not errors
    assert box["on"] is False  # the last of two overlapping calls restores it


def test_engine_fit_runs_keras_fit(digits):
    (x, y), _ = digits
    result = fp16cont.continue_training(_model(), x, y, engine="fit", verbose=0)
    assert result.engine == "fit"


@jax_only
@pytest.mark.parametrize("mode", ["resident", "streamed"])
def test_each_mode_equals_fit_on_the_same_batch_order(digits, mode):
    (x, y), (xv, yv) = digits
    a, b = _model(), _model()
    kwargs = dict(epochs=2, shuffle=False, verbose=0, validation_data=(xv, yv), batch_size=100)
    ra = fp16cont.continue_training(a, x, y, engine="fit", **kwargs)
    rb = fp16cont.continue_training(b, x, y, engine=Engine(mode, steps_per_execution=3), **kwargs)
    assert rb.engine == mode
    assert _same_weights(a, b) == 0.0  # bit-identical on the CPU
    for key, values in ra.history.history.items():
        np.testing.assert_allclose(rb.history.history[key], values, rtol=1e-6, err_msg=key)


@jax_only
def test_a_tf_dataset_is_streamed_and_equals_fit(digits):
    import tensorflow as tf

    (x, y), _ = digits
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    a, b = _model(), _model()
    fp16cont.continue_training(a, ds, engine="fit", epochs=2, verbose=0)
    result = fp16cont.continue_training(b, ds, epochs=2, verbose=0, engine=Engine(steps_per_execution=4))
    assert result.engine == "streamed"
    assert _same_weights(a, b) < 1e-6


@jax_only
def test_shuffled_resident_and_streamed_runs_see_the_same_batches(digits):
    (x, y), _ = digits
    a, b, c = _model(), _model(), _model()
    fp16cont.continue_training(a, x, y, epochs=2, verbose=0, engine=Engine("resident", shuffle_seed=5))
    fp16cont.continue_training(b, x, y, epochs=2, verbose=0, engine=Engine("streamed", shuffle_seed=5, steps_per_execution=4))
    fp16cont.continue_training(c, x, y, epochs=2, verbose=0, engine=Engine("resident", shuffle_seed=6))
    assert _same_weights(a, b) == 0.0
    assert _same_weights(a, c) > 0.0


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch: int, batch: int | None = None) -> None:
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and self.batch is not None and batch >= self.batch:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch and self.batch is None:
            self.model.stop_training = True


def _prefetch_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "fp16cont-prefetch" and t.is_alive()]


@jax_only
@pytest.mark.parametrize("stop_batch", [None, 3])
def test_streamed_runs_read_ahead_across_epochs_and_stop_cleanly(digits, stop_batch):
    """The stream prepares later epochs' chunks ahead; a stop (mid-epoch or at its end) drops them."""
    (x, y), _ = digits
    engine = Engine("streamed", shuffle_seed=3, steps_per_execution=2)
    a, b = _model(), _model()
    fp16cont.continue_training(a, x, y, epochs=2, verbose=0, batch_size=64, engine=Engine("resident", shuffle_seed=3, steps_per_execution=2))
    stopped = fp16cont.continue_training(b, x, y, epochs=4, verbose=0, batch_size=64, engine=engine,
                                         callbacks=[_StopAt(1, stop_batch)])
    assert len(stopped.history.history["loss"]) == 2
    assert not _prefetch_threads()
    if stop_batch is None:  # two whole epochs of the same batches as resident
        assert _same_weights(a, b) == 0.0
    else:
        assert _same_weights(a, b) > 0.0
    c = _model()  # a later run resumes at its initial epoch with that epoch's order
    fp16cont.continue_training(c, x, y, epochs=1, verbose=0, batch_size=64, engine=engine)
    fp16cont.continue_training(c, x, y, epochs=2, initial_epoch=1, verbose=0, batch_size=64, engine=engine)
    assert _same_weights(a, c) == 0.0


class _FailAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        raise RuntimeError("callback failed")


@jax_only
def test_streamed_setup_failure_leaves_no_thread_and_zero_steps_train_whole_epochs(digits):
    (x, y), _ = digits
    engine = Engine("streamed", steps_per_execution=2)
    with pytest.raises(RuntimeError, match="callback failed"):
        fp16cont.continue_training(_model(), x, y, epochs=2, verbose=0, engine=engine, callbacks=[_FailAtStart()])
    assert not _prefetch_threads()
    model = _model()
    result = fp16cont.continue_training(model, x, y, epochs=2, steps_per_epoch=0, verbose=0, engine=engine)
    assert result.engine == "streamed" and not _prefetch_threads()
    # steps_per_epoch=0 is "not set", as Keras' fit reads it: two whole epochs
    assert int(innermost_optimizer(model.optimizer).iterations.numpy()) == 2 * math.ceil(len(x) / 128)


class _Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []
        self.kernels: list[np.ndarray] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch))
        self.kernels.append(np.array(self.model.layers[0].kernel.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch))
        assert "val_loss" in logs and "loss" in logs


@jax_only
def test_callbacks_see_chunks_and_current_weights_and_can_stop_or_change_the_rate(digits):
    (x, y), (xv, yv) = digits
    recorder = _Recorder()
    model = _model()
    full, partial = divmod(len(x), 128)
    result = fp16cont.continue_training(
        model, x, y, epochs=2, verbose=0, validation_data=(xv, yv), callbacks=[recorder],
        engine=Engine("resident", steps_per_execution=4),
    )
    ends = [b for kind, b in recorder.events if kind == "batch_end"]
    expected = [min(s + 3, full - 1) for s in range(0, full, 4)] + ([full] if partial else [])
    assert ends == expected * 2  # one hook per chunk of 4 full batches; the partial batch is a call of its own
    assert [kind for kind, _ in recorder.events].count("epoch_end") == 2
    assert not np.array_equal(recorder.kernels[0], recorder.kernels[1])  # callbacks read current weights
    np.testing.assert_array_equal(recorder.kernels[-1], model.layers[0].kernel.numpy())
    assert len(result.history.history["val_loss"]) == 2

    stopper = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(stopper.model, "stop_training", True))
    result = fp16cont.continue_training(_model(), x, y, epochs=5, verbose=0, callbacks=[stopper])
    assert len(result.history.history["loss"]) == 1

    frozen = _model()
    before = [w.copy() for w in frozen.get_weights()]
    zero_rate = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.0)
    fp16cont.continue_training(frozen, x, y, epochs=1, verbose=0, callbacks=[zero_rate])
    assert all(np.array_equal(u, v) for u, v in zip(before, frozen.get_weights()))


@jax_only
def test_class_and_sample_weights_match_fit(digits):
    (x, y), _ = digits
    weights = {k: 1.0 + k / 10 for k in range(10)}
    sample_weight = (1.0 + (np.arange(len(x)) % 3)).astype("float32")
    for kwargs in ({"class_weight": weights}, {"sample_weight": sample_weight}):
        a, b = _model(), _model()
        fp16cont.continue_training(a, x, y, engine="fit", shuffle=False, verbose=0, **kwargs)
        fp16cont.continue_training(b, x, y, engine="resident", shuffle=False, verbose=0, **kwargs)
        assert _same_weights(a, b) < 1e-6, kwargs


@jax_only
def test_validation_split_matches_fit(digits):
    (x, y), _ = digits
    a, b = _model(), _model()
    ra = fp16cont.continue_training(a, x, y, engine="fit", shuffle=False, verbose=0, validation_split=0.25)
    rb = fp16cont.continue_training(b, x, y, engine="resident", shuffle=False, verbose=0, validation_split=0.25)
    np.testing.assert_allclose(rb.history.history["val_loss"], ra.history.history["val_loss"], rtol=1e-6)


@jax_only
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_checkpoints_resume_bit_identically_in_the_resident_mode(digits, tmp_path, precision):
    (x, y), _ = digits
    source = _model()

    def fresh() -> keras.Model:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # float16 on a CPU warns that it is slow
            return fp16cont.build_fp16_model(source, fp16cont.quantize_weights(source, precision=precision))

    straight = fresh()
    fp16cont.continue_training(straight, x, y, epochs=3, verbose=0)
    resumed = fresh()
    fp16cont.continue_training(resumed, x, y, epochs=2, verbose=0, checkpoint_dir=tmp_path)
    again = fresh()
    result = fp16cont.continue_training(again, x, y, epochs=3, verbose=0, checkpoint_dir=tmp_path)
    assert result.engine == "resident" and result.initial_epoch == 2
    assert _same_weights(straight, again) == 0.0


@jax_only
def test_divergence_is_rolled_back_and_raised_like_fit(digits):
    (x, y), _ = digits
    for engine in ("fit", "resident"):
        model = _model()
        poisoned = x.copy()
        poisoned[300:] = np.nan  # every batch after the third is non-finite
        with pytest.raises(TrainingDivergedError, match="last good weights"):
            fp16cont.continue_training(model, poisoned, y, epochs=6, verbose=0, engine=engine, check_finite=False)
        assert all(np.isfinite(w).all() for w in model.get_weights()), engine  # the last good state is back


@jax_only
def test_uploaded_arrays_are_reused_across_calls(digits):
    (x, y), _ = digits
    xs, ys = fp16cont.upload(x), fp16cont.upload(y)
    a, b = _model(), _model()
    fp16cont.continue_training(a, x, y, epochs=1, verbose=0, shuffle=False)
    result = fp16cont.continue_training(b, xs, ys, epochs=1, verbose=0, shuffle=False)
    assert result.engine == "resident"
    assert _same_weights(a, b) == 0.0
