"""Per-replica BatchNorm statistics (Engine(batch_statistics="replica")): when they apply and what they refuse.

The two-device behaviour (the averaged gradients, the reductions left in the step) is tested in
test_engine_distributed.py, whose children have two JAX devices."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.errors import InvalidArgumentError
from fp16cont.training.engine import Engine
from fp16cont.training.batchnorm import batchnorm_layers
from fp16cont.training.replica import replica_blocker

JAX = keras.backend.backend() == "jax"


def _cnn(loss=None, cls=keras.Sequential) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = cls([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization(),
                 keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(0.05), loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _OwnStep(keras.Sequential):
    def train_step(self, *args, **kwargs):  # a user's own training step
        return super().train_step(*args, **kwargs)


def test_batch_statistics_argument_is_checked():
    with pytest.raises(InvalidArgumentError, match="batch_statistics.*Received: 'local'"):
        Engine(batch_statistics="local")


def test_batch_normalization_is_found_in_nested_models():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    assert batchnorm_layers(outer)
    assert not batchnorm_layers(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


def test_what_the_per_replica_step_cannot_train_is_named():
    assert replica_blocker(_cnn(), None) is None
    assert replica_blocker(_cnn("sparse_categorical_crossentropy"), None) is None  # by name: Keras' mean
    summed = _cnn(keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"))
    assert "reduction 'sum'" in replica_blocker(summed, None)
    assert "overrides train_step" in replica_blocker(_cnn(cls=_OwnStep), None)


@pytest.mark.skipif(not JAX, reason="keras.distribution runs on Keras' JAX backend")
def test_per_replica_statistics_over_one_device_equal_the_global_step_and_refuse_an_own_train_step(digits):
    (x, y), _ = digits
    x, y = x[:256].reshape(-1, 8, 8, 1), y[:256]
    kwargs = dict(epochs=1, batch_size=64, shuffle=False, verbose=0, loss_scaling=False, compensation=None)
    trained = {}
    with keras.distribution.DataParallel(devices=keras.distribution.list_devices()[:1]).scope():
        for statistics in ("global", "replica"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tiny model's float32 islands are most of its values
                model = fp16cont.build_fp16_model(_cnn(), precision="bfloat16", verify=False)
            result = fp16cont.continue_training(model, x, y, engine=Engine("resident", steps_per_execution=2,
                                                                            batch_statistics=statistics), **kwargs)
            trained[statistics] = np.concatenate([np.asarray(w, np.float32).ravel() for w in model.get_weights()])
        assert "BatchNorm statistics per replica" in result.engine_reason
        # one replica: its statistics are the batch's (the same numbers, summed in another order at most)
        np.testing.assert_allclose(trained["replica"], trained["global"], atol=1e-2, rtol=1e-2)
        with pytest.raises(InvalidArgumentError, match="overrides train_step.*batch_statistics='global'"):
            fp16cont.continue_training(_cnn(cls=_OwnStep), x, y, engine=Engine(batch_statistics="replica"), **kwargs)
        # Keras' fit takes the global batch's statistics: asking for the replicas' there is refused, not ignored
        with pytest.raises(InvalidArgumentError, match="needs the resident or streamed mode"):
            fp16cont.continue_training(_cnn(), x, y, engine=Engine("fit", batch_statistics="replica"), **kwargs)
        # without BatchNorm there is nothing per replica: the global step runs and the reason does not claim otherwise
        plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        plain.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        result = fp16cont.continue_training(plain, x, y, engine=Engine(batch_statistics="replica"), **kwargs)
        assert "per replica" not in result.engine_reason
