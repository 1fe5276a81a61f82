"""The stagnation audit sees cancelled updates, and compensation keeps them."""

import keras
import numpy as np

import fp16cont
from fp16cont.reporting.stagnation import stagnation_audit
from tests.conftest import snapshot


def test_audit_shows_cancelled_updates_and_what_kahan_keeps(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                               keras.layers.Dense(10, activation="softmax", name="head")])
    source.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    source.fit(x, y, epochs=1, verbose=0)
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    before = snapshot(model16)
    plain = stagnation_audit(model16, x, y, compensation="none")
    kahan = stagnation_audit(model16, x, y, compensation="kahan")
    assert snapshot(model16) == before  # the audit trains a copy
    assert plain.cancelled_share > 0.5  # lr 1e-3: most bfloat16 updates vanish
    assert plain.lost_share == plain.cancelled_share
    assert kahan.lost_share < 0.05 < kahan.cancelled_share
    assert len(plain.layers) == 1 and "head" not in plain.layers[0].layer  # the float32 head is not audited
    assert "TOTAL" in plain.summary()


def test_training_result_and_history_carry_stagnation(digits):
    (x, y), _ = digits
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16), keras.layers.Dense(10, activation="softmax")])
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16")
    result = fp16cont.continue_training(model16, x, y, epochs=2, optimizer=keras.optimizers.SGD(1e-3),
                                        loss="sparse_categorical_crossentropy", stagnation=True, verbose=0)
    assert len(result.history.history["cancelled_share"]) == 2
    assert 0.0 <= result.stagnation.lost_share <= result.stagnation.cancelled_share <= 1.0
    assert np.isfinite(result.history.history["lost_share"]).all()
    quiet = fp16cont.continue_training(model16, x, y, epochs=1, verbose=0)  # off by default: nothing counted
    assert quiet.stagnation is None and "cancelled_share" not in quiet.history.history
