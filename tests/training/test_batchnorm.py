"""recalibrate_batchnorm sets BatchNormalization statistics to the population statistics, and nothing else."""

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.errors import DataError, InvalidArgumentError, ModelNotBuiltError, NonFiniteOutputError

EPS = 1e-3  # BatchNormalization's default epsilon


def _data(n=70, features=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(2.0, 3.0, (n, features)) * rng.uniform(0.5, 2.0, features)).astype("float32")


def _stacked():
    """Dense -> BN -> Dense -> BN with random (non-default) gamma/beta and stale moving statistics."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
        keras.layers.Dense(3), keras.layers.BatchNormalization(),
    ])
    rng = np.random.default_rng(2)
    for bn in (model.layers[1], model.layers[3]):
        bn.gamma.assign(rng.uniform(0.5, 2.0, bn.gamma.shape).astype("float32"))
        bn.beta.assign(rng.normal(0, 1, bn.beta.shape).astype("float32"))
        bn.moving_mean.assign(np.full(bn.moving_mean.shape, 7.0, "float32"))
    return model


def _numpy_population(model, x, batch_size):
    """Both layers' population statistics, computed with numpy: the second BN sees the first's batch-normalised output."""
    (w1, b1), (w2, b2) = model.layers[0].get_weights(), model.layers[2].get_weights()
    bn1 = model.layers[1]
    g1, be1 = np.asarray(bn1.gamma.numpy(), np.float64), np.asarray(bn1.beta.numpy(), np.float64)
    h1 = x.astype(np.float64) @ w1 + b1
    h2 = []
    for start in range(0, len(x), batch_size):
        hb = h1[start : start + batch_size]
        normed = (hb - hb.mean(0)) / np.sqrt(hb.var(0) + EPS) * g1 + be1  # training mode: batch statistics
        h2.append(normed @ w2 + b2)
    h2 = np.concatenate(h2)
    return (h1.mean(0), h1.var(0)), (h2.mean(0), h2.var(0))


def test_moving_statistics_become_the_population_statistics_computed_with_numpy():
    model, x = _stacked(), _data(70)
    expected = _numpy_population(model, x, batch_size=32)
    result = fp16cont.recalibrate_batchnorm(model, x, batch_size=32)  # batches of 32, 32 and 6
    assert (result.batches, result.samples) == (3, 70)
    assert result.layers == (model.layers[1].path, model.layers[3].path) and result.skipped == ()
    for bn, (mean, var) in zip((model.layers[1], model.layers[3]), expected):
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)
    assert all(s > 0.1 for s in result.shifts)  # the stale means (7.0) were far off
    # a second pass over the same data changes nothing more: the estimate is the population's, not a moving average
    again = fp16cont.recalibrate_batchnorm(model, x, batch_size=32)
    assert max(again.shifts) < 1e-4


def test_steps_take_the_first_batches_and_nested_convolutional_layers_reduce_over_space():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.BatchNormalization(), keras.layers.Conv2D(3, 3)])
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inner(inputs))))
    x = np.random.default_rng(3).normal(1.0, 2.0, (64, 6, 6, 2)).astype("float32")
    result = fp16cont.recalibrate_batchnorm(model, x, batch_size=16, steps=2)
    assert (result.batches, result.samples, len(result.layers)) == (2, 32, 1)
    bn = inner.layers[0]
    first = x[:32].reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(bn.moving_mean.numpy(), first.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), first.var(0), rtol=1e-5)
    assert not np.allclose(bn.moving_mean.numpy(), x.reshape(-1, 2).mean(0), atol=1e-4)  # not all 64 samples
    # more steps than the data holds: one pass, and the result says so
    assert fp16cont.recalibrate_batchnorm(model, x, batch_size=16, steps=50).batches == 4


def test_nothing_but_the_trainable_moving_statistics_changes():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.BatchNormalization(),
        keras.layers.BatchNormalization(name="frozen"), keras.layers.Dense(2),
    ])
    model.get_layer("frozen").trainable = False
    stats = {id(v) for bn in model.layers[2:4] for v in (bn.moving_mean, bn.moving_variance)}
    live = {id(model.layers[2].moving_mean), id(model.layers[2].moving_variance)}
    before = {id(v): np.array(v.numpy()) for v in model.variables}
    momenta = [bn.momentum for bn in model.layers[2:4]]
    x = _data(40)
    x_copy = x.copy()
    result = fp16cont.recalibrate_batchnorm(model, x, batch_size=16)
    assert result.layers == (model.layers[2].path,) and result.skipped == (model.get_layer("frozen").path,)
    for v in model.variables:  # Dropout's seed state included
        if id(v) in live:
            assert not np.array_equal(v.numpy(), before[id(v)]), v.path
        else:
            np.testing.assert_array_equal(v.numpy(), before[id(v)], err_msg=v.path)
    assert stats > live  # the frozen layer's statistics were among those left alone
    assert [bn.momentum for bn in model.layers[2:4]] == momenta
    np.testing.assert_array_equal(x, x_copy)


def test_a_dataset_of_x_y_batches_gives_the_arrays_result():
    tf = pytest.importorskip("tensorflow")
    x = _data(70)
    y = np.zeros(70, "int32")
    expected = fp16cont.recalibrate_batchnorm(model := _stacked(), x, batch_size=32)
    from_arrays = [v.numpy() for v in model.non_trainable_variables]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    result = fp16cont.recalibrate_batchnorm(model := _stacked(), dataset)
    assert (result.batches, result.samples) == (expected.batches, expected.samples)
    for a, b in zip(from_arrays, model.non_trainable_variables):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-6)
    generator = ((x[i : i + 32],) for i in range(0, 70, 32))
    assert fp16cont.recalibrate_batchnorm(_stacked(), generator, steps=2).batches == 2


@pytest.mark.filterwarnings("ignore:.*bfloat16")
def test_a_bfloat16_model_keeps_float32_statistics_near_the_population():
    keras.utils.set_random_seed(0)
    source = keras.Sequential([keras.Input((5,)), keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model = fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)
    x = _data(64)
    result = fp16cont.recalibrate_batchnorm(model, x, batch_size=32)
    bn = fp16cont.training.batchnorm.batchnorm_layers(model)[0]
    assert len(result.layers) == 1 and bn.moving_mean.dtype == "float32"
    xb = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "bfloat16")), np.float64)  # what the layer sees
    np.testing.assert_allclose(bn.moving_mean.numpy(), xb.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), xb.var(0), rtol=1e-3)
    assert source.layers[0].moving_mean.numpy().tolist() == [0.0] * 5  # the source model is untouched


def test_a_model_without_batchnorm_is_left_as_it_is():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    before = [w.copy() for w in model.get_weights()]
    result = fp16cont.recalibrate_batchnorm(model, _data(10))
    assert (result.layers, result.batches) == ((), 0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def _multi_input():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    return keras.Model([a, b], keras.layers.BatchNormalization()(keras.layers.Concatenate()([a, b])))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda m, x: fp16cont.recalibrate_batchnorm("model", x), InvalidArgumentError, "keras.Model"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, x, batch_size=0), InvalidArgumentError, "batch_size"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, x, steps=2.5), InvalidArgumentError, "steps"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, x[:0]), DataError, "no samples"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, x[:, :4]), DataError, "shape"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, 3.0), DataError, "model inputs"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, np.where(x > 5, np.nan, x)), DataError, "NaN"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, iter([]), steps=None), DataError, "no batches"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, iter([x]), batch_size=32), InvalidArgumentError, "own"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(m, iter([x[:, :4]])), DataError, "inputs only"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(_multi_input(), [x[:, :3], x[:5, :2]]), DataError, "length"),
        (lambda m, x: fp16cont.recalibrate_batchnorm(keras.Sequential([keras.layers.BatchNormalization()]), x),
         ModelNotBuiltError, "build"),
    ],
)
def test_bad_input_gets_a_typed_error_and_leaves_the_statistics(call, error, words):
    model, x = _stacked(), _data(40)
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    with pytest.raises(error, match=words) as info:
        call(model, x)
    assert "Fix:" in str(info.value)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.non_trainable_variables))
    assert all(bn.momentum == 0.99 for bn in (model.layers[1], model.layers[3]))


def test_an_endless_dataset_needs_steps():
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices(_data(40)).batch(8).repeat()
    with pytest.raises(InvalidArgumentError, match="steps"):
        fp16cont.recalibrate_batchnorm(_stacked(), dataset)
    assert fp16cont.recalibrate_batchnorm(_stacked(), dataset, steps=7).samples == 56


def test_nan_weights_raise_and_leave_every_statistic_as_it_was():
    model = _stacked()
    model.layers[2].kernel.assign(np.full((4, 3), np.nan, "float32"))  # only the second BN sees NaN
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    with pytest.raises(NonFiniteOutputError, match="left as they were"):
        fp16cont.recalibrate_batchnorm(model, _data(40))
    for a, v in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())


def test_continue_training_recalibrates_on_request_on_random_batches():
    model, x = _stacked(), _data(70)
    y = np.zeros((70, 3), "float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    plain = fp16cont.continue_training(model, x, y, batch_size=16, verbose=0)
    assert plain.batchnorm is None
    stale = model.layers[1].moving_mean.numpy().copy()
    result = fp16cont.continue_training(model, x, y, batch_size=16, verbose=0, recalibrate_batchnorm=2)
    assert (result.batchnorm.batches, result.batchnorm.samples) == (2, 32)  # 2 random batches of 16 rows
    assert result.batchnorm.layers == (model.layers[1].path, model.layers[3].path)
    assert not np.allclose(model.layers[1].moving_mean.numpy(), stale)
    assert "recalibrated 2 BatchNormalization layer(s)" in result.summary()
    with pytest.raises(InvalidArgumentError, match="recalibrate_batchnorm"):
        fp16cont.continue_training(model, x, y, verbose=0, recalibrate_batchnorm=-1)


def test_continue_training_warns_that_a_generator_cannot_be_read_again():
    model, x = _stacked(), _data(32)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    batches = ((x[i : i + 16], np.zeros((16, 3), "float32")) for i in (0, 16))
    with pytest.warns(UserWarning, match="cannot be read a second time"):
        result = fp16cont.continue_training(model, batches, verbose=0, recalibrate_batchnorm=True)
    assert result.batchnorm is None


def test_continue_training_recalibrates_on_the_training_rows_only_with_validation_split():
    model = keras.Sequential([keras.Input((5,)), keras.layers.BatchNormalization()])
    x = _data(80)
    x[64:] += 1000.0  # the held-out last 20%: far from the training rows
    model.compile(keras.optimizers.SGD(0.0), "mse")  # no weight moves: only the statistics change
    result = fp16cont.continue_training(model, x, np.zeros((80, 5), "float32"), batch_size=16, verbose=0,
                                        validation_split=0.2, recalibrate_batchnorm=4)
    assert result.batchnorm.samples == 64  # all 64 training rows, none of the 16 held out
    np.testing.assert_allclose(model.layers[0].moving_mean.numpy(), x[:64].mean(0), rtol=1e-5, atol=1e-4)
