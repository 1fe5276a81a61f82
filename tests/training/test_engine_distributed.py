"""The engine under keras.distribution on CPUs: DataParallel and ModelParallel over two host devices, and two
processes joined by jax.distributed. Each case runs in a child process (JAX's devices are fixed at its start);
the four children (data- and model-parallel runs, two workers) start together."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="the JAX backend is not installed (pip install jax)")
pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]  # child processes, several JAX devices

CHILD = Path(__file__).with_name("engine_distributed_child.py")
ROOT = Path(__file__).resolve().parents[2]
# weights of float16 runs whose gradient sums differ only in order: a few 16-bit ulps after 32 steps
ATOL, RTOL = 0.02, 0.05


def _start(out, *args):
    """A child writing ``out``; its output goes to a file beside it (no pipe to fill while nobody reads)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(out.with_suffix(".log"), "w") as log:
        process = subprocess.Popen([sys.executable, str(CHILD), args[0], str(out), *map(str, args[1:])], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = out.with_suffix(".log")
    return process


def _finish(process):
    process.wait(timeout=600)
    assert process.returncode == 0, process.log.read_text()[-4000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_children(tmp_path_factory):
    """Start the four children: the two-device runs in two processes (data- and model-parallel) and two workers.

    tests/conftest.py calls this when the session starts, so that they run beside the tests in the main process.
    """
    tmp = tmp_path_factory.mktemp("engine_distributed")
    port = _free_port()
    children = [_start(tmp / f"{half}.json", half) for half in ("data_parallel", "model_parallel")]
    children += [_start(tmp / f"worker{i}.json", "worker", i, port, tmp / "checkpoints") for i in range(2)]
    return tmp, children


@pytest.fixture(scope="module")
def runs(early_children, tmp_path_factory):
    tmp, children = early_children.get(__name__) or start_children(tmp_path_factory)
    for child in children:
        _finish(child)
    read = lambda name: json.loads((tmp / name).read_text())  # noqa: E731
    devices = {**read("data_parallel.json"), **read("model_parallel.json")}
    return {"devices": devices, "workers": [read(f"worker{i}.json") for i in range(2)],
            "checkpoints": sorted(p.name for p in (tmp / "checkpoints").iterdir())}


def _flat(weights):
    return np.concatenate([np.asarray(w, np.float32) for w in weights])


def _close(a, b):
    return np.allclose(_flat(a), _flat(b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("engine", ["resident", "streamed"])
def test_data_parallel_engine_matches_one_device(runs, engine):
    one, two = runs["devices"]["one_float16"], runs["devices"][f"dp_float16_{engine}"]
    assert one["engine"] == "resident" and two["engine"] == engine  # the engine ran, not Keras' fit
    assert "DataParallel mesh (2 batch)" in two["reason"]
    assert len(two["devices"]) == 2
    assert two["replicas_agree"]  # both devices hold the same bits of every replicated variable
    assert _close(two["weights"], one["weights"])
    assert np.allclose(two["loss"], one["loss"], rtol=1e-3)
    assert two["loss_scale"] == one["loss_scale"] and two["skipped_steps"] == one["skipped_steps"] == 0


def test_overflow_in_one_replica_is_one_decision_for_all(runs):
    two, clean = runs["devices"]["dp_overflow"], runs["devices"]["dp_float16_resident"]
    # the overflowing row sits in the half of batch 3 that the second device computes; the gradients are
    # summed over both devices inside the step (an all-reduce), so both skip the step and halve the scale
    assert two["all_reduce"] >= 1
    assert two["skipped_steps"] == 2 and two["skipped_per_device"] == [2.0, 2.0]  # once per epoch, on both
    # 1033 rows: 16 batches of 64 and one of 9 (odd, so computed whole on both devices) per epoch, less the skips
    assert two["iterations"] == 2 * 17 - 2
    assert two["loss_scale"] == clean["loss_scale"] / 4 and two["scale_per_device"] == [two["loss_scale"]] * 2
    assert two["rollbacks"] == 0  # the loss scale handled it; the guard had nothing to roll back
    assert two["replicas_agree"]
    assert np.isfinite(_flat(two["weights"])).all()
    # two skipped steps of 32: the model still learnt about as much as the clean run
    assert np.abs(_flat(two["weights"]) - _flat(clean["weights"])).max() < 0.5


def test_per_replica_batch_statistics_average_each_devices_gradients(runs):
    step = {name: _flat(w) for name, w in runs["devices"]["bn_float32_step"].items()}
    # one float32 SGD step over 2 devices: each device's rows normalised with their own statistics and dropped out
    # from their own random stream, the two gradients and moving statistics averaged (computed by hand, half by half) ...
    assert np.abs(step["replica"] - step["by_hand"]).max() < 1e-6
    # ... which is measurably not the global batch's statistics
    assert np.abs(step["replica"] - step["global"]).max() > 1e-4
    # the Dropout's seed state advances as in the global step, the same on every device
    seeds = runs["devices"]["bn_seed_states"]
    assert seeds["replica"] == seeds["global"] == seeds["by_hand"]


def test_per_replica_batch_statistics_leave_only_the_gradient_reductions(runs):
    one, glob, rep = (runs["devices"][f"bn_float16_{k}"] for k in ("one_device", "global", "replica"))
    assert "BatchNorm statistics per replica" in rep["reason"] and "per replica" not in glob["reason"]
    # two BatchNorm layers: their forward and backward statistics are cross-device reductions with global statistics;
    # per replica only the gradients, moving statistics and loss (combined) and the seed state are reduced
    assert rep["all_reduce"] < glob["all_reduce"] and rep["all_reduce"] <= 3
    for run in (glob, rep):
        assert run["replicas_agree"] and run["scale_per_device"] == [run["loss_scale"]] * 2  # one decision for all
        assert run["iterations"] == one["iterations"] and run["skipped_steps"] == one["skipped_steps"]
    assert _close(glob["weights"], one["weights"])
    # per-replica statistics normalise 32 rows at a time, and each device draws its own dropout masks:
    # close to the one-device run (6% apart in relative L2 after 8 steps of SGD 0.1), not equal to it
    apart = np.linalg.norm(_flat(rep["weights"]) - _flat(one["weights"])) / np.linalg.norm(_flat(one["weights"]))
    assert apart < 0.15
    assert np.allclose(rep["loss"], one["loss"], rtol=0.01)


def test_per_replica_statistics_skip_an_overflow_in_one_replica_on_all(runs):
    run = runs["devices"]["bn_float16_replica_overflow"]
    # a heavy sample weight in the second device's half of batch 1 overflows its float16 gradients only:
    # the averaged gradients carry the overflow to both, which skip that step and halve the scale together
    assert run["skipped_steps"] == 1 and run["skipped_per_device"] == [1.0, 1.0]
    assert run["scale_per_device"] == [run["loss_scale"]] * 2 and run["loss_scale"] == 16384.0
    assert run["iterations"] == 4 - 1 and run["replicas_agree"] and run["rollbacks"] == 0


def test_two_processes_match_one_process_and_resume_from_process_0_checkpoint(runs):
    first, second = runs["workers"]
    reference = runs["devices"]["one_float16"]  # global batches of 64 = 32 rows from each process, same order
    for worker in (first, second):
        assert worker["processes"] == 2 and worker["devices"] == 2 and worker["local_devices"] == 1
        assert worker["engine"] == "streamed" and "each of 2 processes feeds its own shard" in worker["reason"]
        assert worker["initial_epoch"] == 1 and worker["epochs_trained"] == 1  # resumed after epoch 1
        assert worker["replicas_agree"]
    assert first["weights"] == second["weights"]  # one model, not two
    assert _close(first["weights"], reference["weights"])
    assert np.allclose(first["first_loss"] + first["loss"], reference["loss"], rtol=1e-3)
    assert runs["checkpoints"] == ["epoch-000001", "epoch-000002", "latest.json"]


def test_model_parallel_shards_16_bit_weights_optimizer_slots_and_kahan_buffers(runs):
    mp = runs["devices"]["model_parallel"]
    specs = mp["specs"]
    sharded = {path: spec for path, spec in specs.items() if "model" in spec[2]}
    kernel = "transformer_layer_0/feedforward_intermediate_dense/kernel"
    assert specs[kernel][0] == "bfloat16" and specs[kernel][2] == ["None", "model"]
    slots = [p for p in specs if "feedforward_intermediate_dense_kernel" in p and "transformer_layer_0" in p]
    # Adam's moments (float32, made by fp16cont for a 16-bit variable) and the 16-bit Kahan buffer
    assert {p.rsplit("_", 1)[-1] for p in slots} == {"momentum", "velocity", "kahan"}
    for path in slots:
        assert specs[path][2] == ["None", "model"], (path, specs[path])
    assert any(s[0] == "float32" for p, s in specs.items() if p in slots)
    assert len(sharded) >= 25
    (one,) = mp["one_device_bytes"].values()
    two = list(mp["two_device_bytes"].values())
    assert len(two) == 2 and two[0] == two[1]
    one_total, two_each = one["weights"] + one["optimizer"], two[0]["weights"] + two[0]["optimizer"]
    print("\nModelParallel (1 batch x 2 model), small GPT-2, bfloat16, Adam with float32 slots + Kahan buffers")
    print("| state | one device | each of two devices | share |")
    print("| --- | --- | --- | --- |")
    for name, a, b in (("weights", one["weights"], two[0]["weights"]), ("optimizer", one["optimizer"], two[0]["optimizer"]),
                       ("total", one_total, two_each)):
        print(f"| {name} | {a:,} B | {b:,} B | {b / a:.2f} |")
    # everything but biases, layer norms and scalars is split in two
    assert two_each < 0.6 * one_total
    assert np.allclose(mp["two_loss"], mp["one_loss"], rtol=1e-3)
    assert _close(mp["two_weights"], mp["one_weights"])
