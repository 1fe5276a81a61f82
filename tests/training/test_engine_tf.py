"""The TensorFlow engine mode ("compiled"): Keras fit's loop with steps_per_execution keeps fit's result and contract."""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.errors import InvalidArgumentError, TrainingDivergedError
from fp16cont.training.engine import Engine, choose_engine
from fp16cont.training.tf_engine import CPU_STEPS_PER_EXECUTION

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the compiled mode runs on TensorFlow")


def _model(seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fp16(precision: str, seed: int = 1) -> keras.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 on a CPU warns that it is slow
        return fp16cont.build_fp16_model(_model(seed), precision=precision, verify=False)


def _gap(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.max(np.abs(np.asarray(u, np.float32) - np.asarray(v, np.float32))))
               for u, v in zip(a.get_weights(), b.get_weights()))


def test_auto_picks_the_compiled_mode_and_says_why(digits):
    (x, y), _ = digits
    choice = choose_engine(Engine(), x, {})
    assert (choice.mode, choice.steps_per_execution) == ("compiled", CPU_STEPS_PER_EXECUTION)
    assert "steps per tf.function call" in choice.reason and "XLA" in choice.reason
    assert choose_engine(Engine(steps_per_execution=3), x, {"unknown_fit_argument": 1}).steps_per_execution == 3
    assert choose_engine(Engine("fit"), x, {}).mode == "fit"
    with pytest.raises(InvalidArgumentError, match="engine='resident' cannot run here"):
        fp16cont.continue_training(_model(), x, y, engine="resident", verbose=0)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_compiled_mode_equals_fit_bit_for_bit(digits, precision):
    (x, y), (xv, yv) = digits
    x, y = x[:700], y[:700]
    make = _model if precision == "float32" else (lambda: _fp16(precision))
    a, b = make(), make()
    kwargs = dict(epochs=2, shuffle=False, verbose=0, validation_data=(xv, yv), batch_size=100)
    ra = fp16cont.continue_training(a, x, y, engine="fit", **kwargs)
    rb = fp16cont.continue_training(b, x, y, engine=Engine("compiled", steps_per_execution=5), **kwargs)
    assert (ra.engine, rb.engine) == ("fit", "compiled")
    assert _gap(a, b) == 0.0  # the same graph per step, in a tf.while_loop: bit-identical on the CPU
    assert rb.history.history == ra.history.history
    assert rb.epoch_seconds and rb.samples_per_second[0] > 0
    assert b.steps_per_execution == 1  # the model's own setting is back


class _Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []
        self.kernels: list[np.ndarray] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch))
        self.kernels.append(np.array(self.model.layers[0].kernel.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch))
        assert "val_loss" in logs and "loss" in logs


def test_callbacks_fire_per_call_see_current_weights_and_can_stop_or_change_the_rate(digits):
    (x, y), (xv, yv) = digits
    recorder = _Recorder()
    model = _model()
    result = fp16cont.continue_training(model, x, y, epochs=2, verbose=0, validation_data=(xv, yv), callbacks=[recorder])
    assert result.engine == "compiled"
    steps = -(-len(x) // 128)  # 12: calls of 8 and 4 steps
    begins = [b for kind, b in recorder.events if kind == "batch_begin"]
    ends = [b for kind, b in recorder.events if kind == "batch_end"]
    # Keras' epoch iterator names a call's nominal last step (15), also for the last call of 4 steps
    assert begins == [0, 8] * 2 and ends == [7, 15] * 2 and steps == 12
    assert [kind for kind, _ in recorder.events].count("epoch_end") == 2
    assert not np.array_equal(recorder.kernels[0], recorder.kernels[1])
    np.testing.assert_array_equal(recorder.kernels[-1], model.layers[0].kernel.numpy())
    assert len(result.history.history["val_loss"]) == 2 and result.epoch_seconds and len(result.epoch_seconds) == 2

    stopper = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(stopper.model, "stop_training", True))
    result = fp16cont.continue_training(_model(), x, y, epochs=5, verbose=0, callbacks=[stopper])
    assert len(result.history.history["loss"]) == 1

    frozen = _fp16("bfloat16")
    before = [np.array(w) for w in frozen.get_weights()]
    zero_rate = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.0)
    fp16cont.continue_training(frozen, x, y, epochs=1, verbose=0, callbacks=[zero_rate], loss="sparse_categorical_crossentropy")
    assert all(np.array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32)) for u, v in zip(before, frozen.get_weights()))


def test_class_and_sample_weights_and_validation_split_match_fit(digits):
    (x, y), _ = digits
    weights = {k: 1.0 + k / 10 for k in range(10)}
    sample_weight = (1.0 + (np.arange(len(x)) % 3)).astype("float32")
    x, y = x[:512], y[:512]
    for kwargs in ({"class_weight": weights}, {"sample_weight": sample_weight[:512]}, {"validation_split": 0.25}):
        a, b = _model(), _model()
        ra = fp16cont.continue_training(a, x, y, engine="fit", shuffle=False, verbose=0, **kwargs)
        rb = fp16cont.continue_training(b, x, y, shuffle=False, verbose=0, **kwargs)
        assert rb.engine == "compiled"
        assert _gap(a, b) == 0.0, kwargs
        assert rb.history.history == ra.history.history, kwargs


def test_checkpoints_resume_bit_identically(digits, tmp_path):
    (x, y), _ = digits
    x, y = x[:512], y[:512]
    straight = _fp16("bfloat16")
    fp16cont.continue_training(straight, x, y, epochs=3, verbose=0, loss="sparse_categorical_crossentropy")
    resumed = _fp16("bfloat16")
    fp16cont.continue_training(resumed, x, y, epochs=2, verbose=0, checkpoint_dir=tmp_path, loss="sparse_categorical_crossentropy")
    again = _fp16("bfloat16")
    result = fp16cont.continue_training(again, x, y, epochs=3, verbose=0, checkpoint_dir=tmp_path, loss="sparse_categorical_crossentropy")
    assert result.engine == "compiled" and result.initial_epoch == 2
    assert _gap(straight, again) == 0.0


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_the_16bit_wrappers_compile_under_xla(digits, precision):
    """Stochastic rounding (and float16's dynamic loss scaling) inside an XLA-compiled step of several steps."""
    (x, y), _ = digits
    x, y = x[:640], y[:640]
    plain, xla = _fp16(precision), _fp16(precision)
    fp16cont.continue_training(plain, x, y, epochs=2, verbose=0, shuffle=False, loss="sparse_categorical_crossentropy",
                               engine=Engine(steps_per_execution=2))
    xla.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", jit_compile=True)
    result = fp16cont.continue_training(xla, x, y, epochs=2, verbose=0, shuffle=False, engine=Engine(steps_per_execution=2))
    assert result.engine == "compiled" and xla.jit_compile
    assert all(np.isfinite(np.asarray(w, np.float32)).all() for w in xla.get_weights())
    # XLA fuses and reorders float arithmetic: equal to the graph run within 16-bit rounding, not bit for bit
    assert _gap(plain, xla) < 0.02
    assert result.history.history["loss"][-1] == pytest.approx(plain.history.history["loss"][-1], rel=0.02)


def test_the_models_own_compiled_setting_and_functions_are_kept(digits):
    (x, y), _ = digits
    x, y = x[:512], y[:512]
    model = _fp16("bfloat16")
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", steps_per_execution=2)
    fp16cont.continue_training(model, x, y, epochs=1, verbose=0)
    fp16cont.continue_training(model, x, y, epochs=1, verbose=0)
    assert model.steps_per_execution == 2
    assert not [name for name in vars(model) if "fp16cont" in name]  # nothing of the run's own loop stays on the model
    wide = fp16cont.continue_training(model, x, y, epochs=1, verbose=0, engine=Engine(steps_per_execution=1))
    assert wide.engine == "compiled"  # the model's own 2 steps per call is the floor


def test_divergence_is_rolled_back_and_raised_like_fit(digits):
    (x, y), _ = digits
    for engine in ("fit", "compiled"):
        model = _model()
        poisoned = x.copy()
        poisoned[300:] = np.nan  # every batch after the third is non-finite
        with pytest.raises(TrainingDivergedError, match="last good weights"):
            fp16cont.continue_training(model, poisoned, y, epochs=6, verbose=0, engine=engine, check_finite=False)
        assert all(np.isfinite(w).all() for w in model.get_weights()), engine


def test_the_progress_bar_never_counts_past_the_epoch(capsys):
    """Keras' bar prints 16/12 for 12 batches at 8 per call; the compiled mode's bar stops at 12/12."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)])
    x, y = np.zeros((12 * 32 - 5, 64), "float32"), np.zeros(12 * 32 - 5, "int32")  # 12 batches, the last short
    seen = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            time.sleep(0.06)  # longer than the bar's refresh interval, so it draws every update

        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    result = fp16cont.continue_training(
        model, x, y, epochs=2, batch_size=32, verbose=1, loss="sparse_categorical_crossentropy",
        engine=Engine("compiled", steps_per_execution=8), callbacks=[Steps()],
    )
    out = capsys.readouterr().out
    assert result.engine == "compiled"
    assert "12/12" in out and "16/12" not in out
    assert seen == [7, 15, 7, 15]  # other callbacks still see Keras' own step numbers


def test_steps_per_epoch_trains_exactly_the_steps_asked_for(digits):
    """Keras runs whole calls: 10 steps at 8 per call would train 16; the engine lowers the count to 5."""
    import tensorflow as tf

    (x, y), _ = digits
    data = tf.data.Dataset.from_tensor_slices((x[:320], y[:320])).batch(32).repeat()
    model = _model()
    seen = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    result = fp16cont.continue_training(model, data, epochs=2, steps_per_epoch=10, verbose=0,
                                        engine=Engine("compiled", steps_per_execution=8), callbacks=[Steps()])
    assert result.engine == "compiled" and "5 steps per call" in result.engine_reason
    assert int(model.optimizer.iterations.numpy()) == 20
    assert seen == [4, 9, 4, 9]
