import keras
import numpy as np
import pytest
import tensorflow as tf

import fp16cont
from fp16cont.errors import DataError, InvalidArgumentError, InvalidSourceError, MissingLossError, ModelNotBuiltError
from fp16cont.optim.carry import innermost_optimizer
from tests.conftest import MODEL_BUILDERS, snapshot


@pytest.fixture(scope="module")
def trained_source(digits):
    keras.utils.set_random_seed(0)
    model = MODEL_BUILDERS["sequential"]()
    (x, y), _ = digits
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=128, verbose=0)
    return model


@pytest.fixture()
def source(trained_source):
    """The float32 model trained once for the module; each test that takes it must leave it as it was."""
    before = snapshot(trained_source)
    yield trained_source
    assert snapshot(trained_source) == before, "a test changed the shared source model"


def test_three_step_flow_learns_and_reports(source, digits):
    (x, y), (xt, yt) = digits
    before = snapshot(source)
    q = fp16cont.quantize_weights(source, precision="auto")
    model16 = fp16cont.build_fp16_model(source, q)
    acc_before = model16.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
    result = fp16cont.continue_training(model16, x, y, epochs=3, validation_data=(xt, yt), verbose=0)
    assert result.model is model16
    assert result.precision == q.precision
    assert len(result.epoch_seconds) == 3 and len(result.samples_per_second) == 3
    assert all(s > 0 for s in result.samples_per_second)
    assert result.wall_seconds >= sum(result.epoch_seconds) * 0.9
    assert result.history.history["val_accuracy"][-1] >= acc_before - 0.02
    assert result.weight_bytes == fp16cont.inspect(model16).weight_bytes
    assert result.optimizer_bytes > 0
    assert "epoch" in result.summary()
    assert snapshot(source) == before  # the float32 source is untouched


def test_defaults_are_the_papers_sgd_and_batch_128(digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(MODEL_BUILDERS["sequential"](), precision="bfloat16")
    assert not model16.compiled
    result = fp16cont.continue_training(model16, x[:512], y[:512], loss="sparse_categorical_crossentropy", verbose=0)
    assert isinstance(innermost_optimizer(model16.optimizer), keras.optimizers.SGD)
    assert float(model16.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert result.compensation == "stochastic"  # half the bytes, float32 accuracy (benchmarks/RESULTS.md)
    assert result.history.params["steps"] == 4  # 512 / 128


def test_compiled_model_keeps_loss_metrics_and_optimizer_state(source, digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    first = fp16cont.continue_training(model16, x, y, epochs=1, verbose=0)
    assert "accuracy" in first.history.history
    assert isinstance(innermost_optimizer(model16.optimizer), keras.optimizers.Adam)  # from the source's compile config
    steps = int(model16.optimizer.iterations.numpy())
    fp16cont.continue_training(model16, x, y, epochs=1, verbose=0)
    assert int(model16.optimizer.iterations.numpy()) == 2 * steps  # state carried on


def test_overrides_replace_optimizer_loss_and_metrics(source, digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    result = fp16cont.continue_training(
        model16, x, y, optimizer="rmsprop", loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["sparse_top_k_categorical_accuracy"], verbose=0,
    )
    assert isinstance(innermost_optimizer(model16.optimizer), keras.optimizers.RMSprop)
    assert "sparse_top_k_categorical_accuracy" in result.history.history


def test_tf_data_pydataset_and_callbacks(source, digits):
    (x, y), (xt, yt) = digits
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=100)
    result = fp16cont.continue_training(model16, dataset, epochs=2, callbacks=[callback, stop], verbose=0)
    assert seen == [0, 1]
    assert result.history.params["steps"] == int(np.ceil(len(x) / 64))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 100:(i + 1) * 100], y[i * 100:(i + 1) * 100]

    result = fp16cont.continue_training(model16, Batches(), epochs=1, validation_data=(xt, yt), verbose=0)
    assert "val_loss" in result.history.history


def test_float16_pure_training_gets_dynamic_loss_scaling(source, digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(source, precision="float16")
    result = fp16cont.continue_training(model16, x[:256], y[:256], epochs=1, verbose=0)
    assert isinstance(model16.optimizer, keras.optimizers.LossScaleOptimizer)
    assert result.loss_scale is not None and result.loss_scale > 1
    assert all(np.isfinite(keras.ops.convert_to_numpy(v.value)).all() for v in model16.trainable_weights)
    bf16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    assert fp16cont.continue_training(bf16, x[:256], y[:256], verbose=0).loss_scale is None


def test_uncompiled_model_without_loss_is_a_typed_error(digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(MODEL_BUILDERS["sequential"](), precision="bfloat16")
    with pytest.raises(MissingLossError, match="loss="):
        fp16cont.continue_training(model16, x, y, verbose=0)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"epochs": 0}, InvalidArgumentError, "epochs"),
        ({"batch_size": -1}, InvalidArgumentError, "batch_size"),
        ({"optimizer": "no_such_optimizer"}, InvalidArgumentError, "optimizer"),
        ({"loss_scaling": "yes"}, InvalidArgumentError, "loss_scaling"),
        # fit arguments passed through: the same typed error on every backend, before the model is recompiled
        ({"steps_per_epoch": -2}, InvalidArgumentError, "steps_per_epoch"),
        ({"validation_split": 1.5}, InvalidArgumentError, "validation_split"),
        ({"validation_freq": 0}, InvalidArgumentError, "validation_freq"),
        ({"class_weight": [1, 2, 3]}, InvalidArgumentError, "class_weight"),
        ({"no_such_argument": 1}, InvalidArgumentError, "no_such_argument"),
        ({"sample_weight": np.ones(10)}, DataError, "one weight per sample"),
        ({"validation_data": (np.zeros((10, 8, 8, 1), "float32"), np.zeros(5, "int64"))}, DataError, "x_val with 10, y_val with 5"),
    ],
)
def test_bad_arguments_are_typed_errors(source, digits, kwargs, error, match):
    (x, y), _ = digits
    with pytest.raises(error, match=match):
        fp16cont.continue_training(source, x, y, verbose=0, **kwargs)


def test_bad_data_and_models_are_typed_errors(source, digits):
    (x, y), _ = digits
    with pytest.raises(DataError, match="empty"):
        fp16cont.continue_training(source, x[:0], y[:0], verbose=0)
    with pytest.raises(DataError, match="same length"):
        fp16cont.continue_training(source, x, y[:10], verbose=0)
    with pytest.raises(InvalidSourceError):
        fp16cont.continue_training("model.keras", x, y)
    with pytest.raises(ModelNotBuiltError):
        fp16cont.continue_training(keras.Sequential([keras.layers.Dense(2)]), x, y, loss="mse")


def test_mixed_float16_gets_loss_scaling_and_reports_its_precision(source, digits):
    (x, y), _ = digits
    mixed = fp16cont.build_fp16_model(source, precision="float16", mode="mixed")
    result = fp16cont.continue_training(mixed, x[:256], y[:256], verbose=0)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert result.precision == "mixed_float16"


def test_samples_per_second_uses_the_datasets_own_batch_size(digits):
    (x, y), _ = digits
    model = MODEL_BUILDERS["sequential"]()
    dataset = tf.data.Dataset.from_tensor_slices((x[:1024], y[:1024])).batch(32)
    result = fp16cont.continue_training(model, dataset, loss="sparse_categorical_crossentropy", verbose=0)
    expected = 1024 / result.epoch_seconds[0]
    assert result.samples_per_second[0] == pytest.approx(expected, rel=0.05)


def test_repeated_calls_with_loss_and_metrics_keep_the_optimizer_state(source, digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    fp16cont.continue_training(model16, x, y, loss="sparse_categorical_crossentropy", verbose=0)
    inner = innermost_optimizer(model16.optimizer)
    steps = int(inner.iterations.numpy())
    fp16cont.continue_training(model16, x, y, loss="sparse_categorical_crossentropy", metrics=["accuracy"], verbose=0)
    assert innermost_optimizer(model16.optimizer) is inner
    assert int(inner.iterations.numpy()) == 2 * steps


def test_float32_slots_on_request_in_the_main_workflow(source, digits):
    (x, y), _ = digits
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")  # source compiled with Adam
    fp16cont.continue_training(model16, x[:256], y[:256], slot_dtype="float32", verbose=0)
    inner = innermost_optimizer(model16.optimizer)
    slots = [v for v in inner.variables if len(v.shape)]
    low = {id(v) for v in model16.trainable_weights if str(v.dtype) == "bfloat16"}
    assert low and all(str(v.dtype) == "float32" for v in slots)


def test_a_16bit_body_behind_a_large_float32_head_trains_and_reports_as_16bit():
    """The float32 output island holds 98% of the parameters; the 16-bit body still needs 16-bit training."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, name="body"),
                              keras.layers.Dense(1000, activation="softmax", name="head")])
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 64)).astype("float32"), rng.integers(0, 1000, 64)
    model16 = fp16cont.build_fp16_model(model, precision="float16", verify=False)
    assert str(model16.get_layer("body").kernel.dtype) == "float16"
    result = fp16cont.continue_training(model16, x, y, batch_size=32, verbose=0)
    assert result.precision == "float16"
    assert result.compensation == "stochastic" and result.loss_scale is not None
    assert result.sixteen_bit_share == pytest.approx((64 * 16 + 16) / (64 * 16 + 16 + 16 * 1000 + 1000))  # kernels and biases
    assert "pure float16" in result.summary() and "of the trainable values; the rest in float32 islands" in result.summary()


def test_summary_aligns_validation_columns_under_validation_freq(source, digits):
    (x, y), (xt, yt) = digits
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    result = fp16cont.continue_training(model16, x[:256], y[:256], epochs=3, verbose=0,
                                        validation_data=(xt[:64], yt[:64]), validation_freq=2)
    lines = result.summary().splitlines()
    header = [c.strip() for c in lines[0].split("|")]
    rows = [[c.strip() for c in line.split("|")] for line in lines[2:5]]
    column = header.index("val_loss")
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [r[column] == "-" for r in rows] == [True, False, True]  # validated in epoch 2 only
    assert float(rows[1][column]) == pytest.approx(result.history.history["val_loss"][0], abs=1e-4)


def test_nan_targets_get_a_fix_that_names_the_targets(source, digits):
    (x, y), _ = digits
    bad = y[:64].astype("float32")
    bad[3] = np.nan
    with pytest.raises(DataError, match=r"`y` holds NaN or Inf in 1 of 64 samples.*np\.isfinite\(y\)"):
        fp16cont.continue_training(source, x[:64], bad, verbose=0)
