"""Kill a training run mid-epoch, rerun it, and get the uninterrupted run's weights bit for bit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.training.checkpoint import LATEST, load_checkpoint, save_checkpoint
from fp16cont.errors import WeightMismatchError

CHILD = Path(__file__).with_name("resume_child.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(*args, **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(CHILD), *map(str, args)], env=env, **popen)


def _weights(path):
    with np.load(path) as data:
        return int(data["initial_epoch"]), [data[k].tobytes() for k in sorted(data.files) if k.startswith("w")]


def _latest_epoch(folder):
    try:
        return json.loads((folder / LATEST).read_text())["epoch"]
    except (OSError, ValueError):
        return 0


# Both compensations on TensorFlow; on JAX (CI's second phase) the default one: a Kahan buffer is one more
# optimizer variable in the checkpoint, written and read the same way on every backend.
COMPENSATIONS = ["stochastic"] if keras.backend.backend() == "jax" else ["kahan", "stochastic"]


def start_children(tmp_path_factory):
    """The uninterrupted reference run of each compensation: independent of the rest, they start at once.

    tests/conftest.py calls this when the session starts, so that they run beside the tests in the main process.
    """
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return {c: (_run(tmp / c, tmp / f"{c}.npz", "fast", c), tmp / f"{c}.npz") for c in COMPENSATIONS}


@pytest.fixture(scope="module")
def uninterrupted(early_children, tmp_path_factory):
    started = early_children.get(__name__) or start_children(tmp_path_factory)
    yield started
    for process, _ in started.values():  # a test that failed early leaves none running
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.subprocess
@pytest.mark.parametrize("compensation", COMPENSATIONS)
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, compensation, uninterrupted):
    whole, whole_out = uninterrupted[compensation]
    killed = _run(tmp_path / "b", tmp_path / "b.npz", "slow", compensation)
    deadline = time.time() + 240
    while _latest_epoch(tmp_path / "b") < 2 and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the third epoch
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    done = _latest_epoch(tmp_path / "b")
    assert 2 <= done < 4
    assert not (tmp_path / "b.npz").exists()
    resumed = _run(tmp_path / "b", tmp_path / "b.npz", "fast", compensation)
    assert whole.wait(timeout=300) == 0
    assert resumed.wait(timeout=300) == 0
    epoch_a, weights_a = _weights(whole_out)
    epoch_b, weights_b = _weights(tmp_path / "b.npz")
    assert (epoch_a, epoch_b) == (0, done)
    assert weights_a == weights_b  # bit-identical: same data order, weights and optimizer state


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, digits):
    (x, y), _ = digits
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model = fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)
    fp16cont.continue_training(model, x, y, epochs=1, loss="sparse_categorical_crossentropy", checkpoint_dir=tmp_path,
                               verbose=0)
    saved = [np.array(w) for w in model.get_weights()]
    # a save killed after writing part of the next checkpoint: a staging folder, no new pointer
    (tmp_path / ".staging-000002-1").mkdir()
    (tmp_path / ".staging-000002-1" / "model.weights.h5").write_bytes(b"partial")
    fp16cont.continue_training(model, x, y, epochs=1, verbose=0)  # weights move on
    assert load_checkpoint(model, tmp_path) == 1
    for a, b in zip(saved, model.get_weights()):
        assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_checkpoint_of_another_optimizer_is_refused(tmp_path, digits):
    (x, y), _ = digits
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model = fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy")
    save_checkpoint(model, tmp_path, 1)
    other = fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)
    other.compile(keras.optimizers.SGD(), "sparse_categorical_crossentropy")
    with pytest.raises(WeightMismatchError, match="same optimizer"):
        load_checkpoint(other, tmp_path)


def test_checkpoint_of_another_architecture_is_a_weight_mismatch(tmp_path):
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model = fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)
    model.compile(keras.optimizers.SGD(), "sparse_categorical_crossentropy")
    save_checkpoint(model, tmp_path, 1)
    wider = fp16cont.build_fp16_model(keras.Sequential([keras.Input((64,)), keras.layers.Dense(12)]),
                                      precision="bfloat16", verify=False)
    wider.compile(keras.optimizers.SGD(), "mse")
    with pytest.raises(WeightMismatchError, match="same model"):
        load_checkpoint(wider, tmp_path)
