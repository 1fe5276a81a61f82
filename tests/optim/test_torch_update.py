"""The compensated multi-tensor update on Keras' torch backend (a child process: the backend is per process).

Skipped where torch is not installed (it is not a test dependency: its wheels
are large); it runs wherever torch is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.subprocess

_CHILD = textwrap.dedent(
    """
    import json
    import keras, numpy as np, torch
    from fp16cont.optim.compensation import CompensatedOptimizer, rounding_key, stochastic_round
    from fp16cont.optim.torch_update import _blocked_stochastic_round, step_key

    out = {}
    # the CPU's blocked rounding gives the shared function's values bit for bit
    x = torch.randn(100_003) * 3
    x[5], x[7], x[100] = float("nan"), float("inf"), 1e-6
    for dtype in ("bfloat16", "float16"):
        key = rounding_key(3, 17, 5)
        a = stochastic_round(x, dtype, key).float()
        b = _blocked_stochastic_round(x, dtype, key).float()
        out[dtype + "_equal"] = bool(torch.equal(a.nan_to_num(), b.nan_to_num()))
        out[dtype + "_nan_kept"] = bool(torch.isnan(b[5]))
        whole = _blocked_stochastic_round(x, dtype, key, block=None).float()  # the GPU's single pass
        out[dtype + "_whole_equal"] = bool(torch.equal(a.nan_to_num(), whole.nan_to_num()))
    # the key computed from a step tensor equals the shared function's, for any seed, step and salt
    out["keys_equal"] = all(
        int(step_key(seed, torch.tensor(step, dtype=torch.int64), salt)) == int(rounding_key(seed, step, salt))
        for seed in (0, 7, 2**31 + 5) for step in (0, 1, 17, 123456789, 2**31 - 1) for salt in (0, 5, 0x7FFF))

    # updates far below a bfloat16 ulp survive in expectation: 20 steps of SGD(1e-3) with gradient 0.1
    def run(compensation, optimizer):
        v = [keras.Variable(np.ones((64, 64), np.float32), dtype="bfloat16", name="w%d" % i) for i in range(3)]
        opt = CompensatedOptimizer(optimizer, compensation)
        for _ in range(20):
            opt.apply([torch.full((64, 64), 0.1, dtype=torch.bfloat16) for _ in v], v)
        return [float(keras.ops.convert_to_numpy(keras.ops.cast(w.value, "float32")).mean()) for w in v]

    out["plain"] = run("none", keras.optimizers.SGD(1e-3))
    out["stochastic"] = run("stochastic", keras.optimizers.SGD(1e-3))
    out["kahan"] = run("kahan", keras.optimizers.SGD(1e-3))
    out["momentum"] = run("stochastic", keras.optimizers.SGD(1e-3, momentum=0.9))

    # through the dynamic loss scale: float16 and float32 variables, gradients scaled, one overflow skipped
    from fp16cont.optim.loss_scale import DynamicLossScale
    v16 = keras.Variable(np.ones((64, 64), np.float32), dtype="float16", name="w16")
    v32 = keras.Variable(np.ones((8,), np.float32), dtype="float32", name="w32")
    scaled = DynamicLossScale(CompensatedOptimizer(keras.optimizers.SGD(1e-3), "stochastic"), initial_scale=2.0**10)
    scaled.build([v16, v32])
    for step in range(21):
        bad = step == 10
        scale = float(keras.ops.convert_to_numpy(scaled.dynamic_scale))
        g16 = torch.full((64, 64), float("inf") if bad else 0.1 * scale, dtype=torch.float16)
        scaled.apply([g16, torch.full((8,), 0.1 * scale)], [v16, v32])
    out["scaled16"] = float(keras.ops.convert_to_numpy(keras.ops.cast(v16.value, "float32")).mean())
    out["scaled32"] = float(keras.ops.convert_to_numpy(v32.value).mean())
    out["skipped"] = int(keras.ops.convert_to_numpy(scaled.skipped_steps))
    print(json.dumps(out))
    """
)


def start_children(tmp_path_factory):
    """The torch child, started at once; its output goes to files (no pipe to fill while nobody reads).

    tests/conftest.py calls this when the session starts, so that it runs beside the tests in the main process.
    """
    folder = tmp_path_factory.mktemp("torch_update")
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=stdout, stderr=stderr, text=True, env=env)
    return {"torch": (process, folder)}


@pytest.fixture(scope="module")
def child(early_children, tmp_path_factory):
    started = early_children.get(__name__) or start_children(tmp_path_factory)
    process, folder = started["torch"]
    yield process, folder
    if process.poll() is None:  # a test that failed early leaves none running
        process.kill()
        process.wait()


def test_torch_compensated_update_tracks_float32(child) -> None:
    process, folder = child
    process.wait(timeout=300)
    assert process.returncode == 0, (folder / "stderr").read_text()[-3000:]
    out = json.loads((folder / "stdout").read_text().strip().splitlines()[-1])
    assert out["bfloat16_equal"] and out["float16_equal"]
    assert out["bfloat16_nan_kept"] and out["float16_nan_kept"]
    assert out["bfloat16_whole_equal"] and out["float16_whole_equal"]
    assert out["keys_equal"]
    assert out["plain"] == [1.0, 1.0, 1.0]  # every update of 1e-4 rounds away in bfloat16 (ulp 2**-7 at 1.0)
    for mean in out["stochastic"]:  # unbiased: the mean of 4,096 weights lands on float32's 0.998
        assert mean == pytest.approx(1.0 - 20 * 1e-4, abs=2e-4)
    for mean in out["kahan"]:  # the weight is float32's 0.998 rounded to nearest; the buffer holds the rest
        assert mean != 1.0 and abs(mean - (1.0 - 20 * 1e-4)) <= 2.0**-8
    # momentum 0.9: sum over 20 steps of 1e-4 * (1 - 0.9**(k+1)) / 0.1
    expected = 1.0 - sum(1e-4 * (1 - 0.9 ** (k + 1)) / 0.1 for k in range(20))
    for mean in out["momentum"]:
        assert mean == pytest.approx(expected, abs=3e-4)
    # the loss-scaled path (gradients unscaled as one concatenation): 20 applied steps of 1e-4, one skipped
    assert out["skipped"] == 1
    assert out["scaled32"] == pytest.approx(1.0 - 20 * 1e-4, abs=1e-6)
    assert out["scaled16"] == pytest.approx(1.0 - 20 * 1e-4, abs=2e-4) and out["scaled16"] != 1.0
