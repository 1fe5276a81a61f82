"""The public calls never change what the user passed: the source model, its optimizer,
an optimizer given as an argument, or keras.config."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.optim.carry import innermost_optimizer
from tests.conftest import object_state, snapshot

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01),
}


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_build_train_and_compare_leave_every_attribute_of_the_users_objects(name, precision, digits):
    (x, y), (xt, yt) = digits
    x, y, xt, yt = x[:128], y[:128], xt[:64], yt[:64]
    keras.utils.set_random_seed(0)
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                               keras.layers.Dense(10, activation="softmax")], name="src")
    source.compile(OPTIMIZERS[name](), "sparse_categorical_crossentropy", metrics=["accuracy"])
    source.fit(x, y, batch_size=64, verbose=0)  # the source's optimizer now has state
    given = OPTIMIZERS[name]()  # an unbuilt optimizer passed by argument
    before, given_before = snapshot(source), object_state(given)
    start = int(source.optimizer.iterations.numpy())

    model16 = fp16cont.build_fp16_model(source, precision=precision, keep_float32=None)
    assert snapshot(source) == before
    # the source's own (built) optimizer passed on: its state is the starting point of a private copy
    fp16cont.continue_training(model16, x, y, batch_size=64, optimizer=source.optimizer, verbose=0)
    trained = innermost_optimizer(model16.optimizer)
    assert trained is not source.optimizer and type(trained) is type(source.optimizer)
    assert int(trained.iterations.numpy()) == start + 2
    if name == "adamw":  # compare trains a copy made from the given optimizer's config, whatever its class
        fp16cont.compare(source, (x, y), (xt, yt), precisions=(precision,), epochs=1, batch_size=64,
                         optimizer=given, warmup=False, verbose=0)
    assert snapshot(source) == before
    assert object_state(given) == given_before
    assert not given.built and int(source.optimizer.iterations.numpy()) == start


def test_wrappers_used_on_their_own_leave_the_optimizer_they_wrap():
    for wrap in (fp16cont.DynamicLossScale, lambda o: fp16cont.CompensatedOptimizer(o, "kahan")):
        given = keras.optimizers.SGD(0.01, momentum=0.9)
        before = object_state(given)
        wrapped = wrap(given)
        wrapped.build([keras.Variable(np.ones(3, np.float32), dtype="float16")])
        assert object_state(given) == before and not given.built
