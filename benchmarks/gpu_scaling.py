"""``continue_training`` on one GPU and on two under ``keras.distribution.DataParallel``, in one process.

ResNet-50 at 224x224 (``keras.applications.ResNet50(weights=None)``) built
in float16 by ``build_fp16_model``, trained by ``continue_training`` with its
defaults (SGD 0.01, stochastic-rounding compensation, dynamic loss scaling,
NaN guard, engine ``"auto"``: the resident mode), synthetic data (uniform
random images as float32 in [0, 1], random labels; throughput does not
depend on pixel values), batch 128 per GPU:

  one_gpu   no distribution: the model lives on GPU 0, batch 128
  two_gpus  DataParallel over GPUs 0 and 1: global batch 256, each GPU
            computes 128 rows, the gradients are summed over both inside
            the compiled step; BatchNorm normalises with the global
            batch's statistics (the engine's default)
  two_gpus_replica  the same with ``Engine(batch_statistics="replica")``:
            each GPU's BatchNorm uses its own rows' statistics, so no
            cross-device reduction runs inside the forward pass

Each variant runs one untimed epoch first (compilation), then the two are
timed in alternation, ``--repeats`` epochs each; an epoch (``--steps``
steps) is timed from its start to the devices having finished it. Images
per second are medians. The data check (``check_finite``) runs on each
model's first call only; it happens before the epoch starts either way.

Then the results check: a one-GPU model at batch 256 and a two-GPU model
at global batch 256, built from the same float32 weights, train
``--check-steps`` steps on the same batches in the same order; the report
gives how far their final weights are apart, whether both GPUs hold the
same bits of every replicated variable, and the loss scale and skipped-step
counter as each GPU holds them (one decision for all replicas).

Per-GPU peak memory is ``jax.devices()[i].memory_stats()["peak_bytes_in_use"]``
read after the one-GPU warm-up (GPU 0: the one-GPU run) and at the end
(both GPUs; GPU 0's peak is then the larger of its two runs). The
resident data is kept whole on every GPU that trains (reported as
``data_bytes``).

Run (2 GPUs):  KERAS_BACKEND=jax python benchmarks/gpu_scaling.py
Smoke (CPU):   KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
               python benchmarks/gpu_scaling.py --tiny
Writes ``$OUT/gpu_scaling.json`` when ``OUT`` is set, else
``benchmarks/results/gpu_scaling[_tiny].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--tiny" in sys.argv and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from _timing import SyncedTimer, block  # noqa: E402  (benchmarks/_timing.py)
from fp16cont.optim.loss_scale import find_loss_scale  # noqa: E402
from fp16cont.training.engine import Engine  # noqa: E402



def source_model(args: argparse.Namespace, shape: tuple[int, ...], classes: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    if args.tiny:
        model = fp16cont.resnet(8, input_shape=shape, num_classes=classes)
    else:
        model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=classes)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def f16(source: keras.Model, distribution: Any = None) -> keras.Model:
    """The float16 model, its variables laid out by ``distribution`` when one is given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if distribution is None:
            return fp16cont.build_fp16_model(source, precision="float16", verify=False)
        with distribution.scope():
            return fp16cont.build_fp16_model(source, precision="float16", verify=False)


def train(model: keras.Model, data: dict[str, Any], batch_size: int, steps: int, distribution: Any, *,
          first: bool, shuffle: bool = True, statistics: str = "global") -> tuple[float, Any]:
    timer = SyncedTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scope = distribution.scope() if distribution is not None else _nothing()
        with scope:
            result = fp16cont.continue_training(
                model, data["x"], data["y"], epochs=1, batch_size=batch_size, steps_per_epoch=steps, verbose=0,
                callbacks=[timer], check_finite=first, shuffle=shuffle, engine=Engine(batch_statistics=statistics),
            )
    return timer.seconds[-1], result


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def peaks() -> list[int | None]:
    out = []
    for device in jax.devices():
        try:
            out.append((device.memory_stats() or {}).get("peak_bytes_in_use"))
        except Exception:  # CPUs report nothing
            out.append(None)
    return out


def per_device(variable: Any) -> list[float]:
    return [float(np.asarray(shard.data)) for shard in variable.value.addressable_shards]


def replicas_agree(model: keras.Model) -> bool:
    for v in [*model.weights, *model.optimizer.variables]:
        shards = v.value.addressable_shards
        if len(shards) > 1:
            first = np.asarray(shards[0].data)
            if not all(np.array_equal(first, np.asarray(s.data), equal_nan=True) for s in shards[1:]):
                return False
    return True


def scaling_state(model: keras.Model, result: Any) -> dict[str, Any]:
    scaler = find_loss_scale(model.optimizer)
    return {
        "loss_scale": result.loss_scale, "skipped_steps": result.skipped_steps, "rollbacks": result.rollbacks,
        "loss_scale_per_device": per_device(scaler.dynamic_scale) if scaler is not None else None,
        "skipped_steps_per_device": per_device(scaler.skipped_steps) if scaler is not None else None,
        "engine": result.engine, "engine_reason": result.engine_reason,
    }


def weights_apart(a: keras.Model, b: keras.Model) -> dict[str, float]:
    wa = np.concatenate([np.asarray(w, np.float32).ravel() for w in a.get_weights()])
    wb = np.concatenate([np.asarray(w, np.float32).ravel() for w in b.get_weights()])
    return {"max_abs_diff": float(np.max(np.abs(wa - wb))),
            "relative_l2_diff": float(np.linalg.norm(wa - wb) / max(np.linalg.norm(wa), 1e-30)),
            "all_finite": bool(np.isfinite(wa).all() and np.isfinite(wb).all())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default 64; --tiny 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="rows per GPU (default 128; --tiny 8)")
    parser.add_argument("--check-steps", type=int, default=None, help="steps of the results check (default 16; --tiny 4)")
    parser.add_argument("--tiny", action="store_true", help="ResNet-8 on 16x16 images over 2 host CPU devices")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    per_gpu = args.batch_size or (8 if args.tiny else 128)
    steps = args.steps or (4 if args.tiny else 64)
    check_steps = args.check_steps or (4 if args.tiny else 16)
    shape, classes = ((16, 16, 3), 10) if args.tiny else ((224, 224, 3), 1000)
    started = time.perf_counter()

    devices = jax.devices()
    if len(devices) < 2:
        raise SystemExit(f"needs 2 devices, found {devices}")
    names = [f"{d.platform}:{d.id}" for d in devices[:2]]
    two = keras.distribution.DataParallel(devices=names)
    rng = np.random.default_rng(0)
    rows = max(steps, check_steps) * 2 * per_gpu
    x = (rng.integers(0, 256, (rows, *shape), dtype=np.uint8).astype(np.float32) / np.float32(255))
    data = {"x": x, "y": rng.integers(0, classes, rows).astype(np.int32)}
    print(f"{len(devices)} devices ({devices[0].device_kind}); data {x.nbytes / 2**30:.2f} GiB; "
          f"jax {jax.__version__}, keras {keras.__version__}", flush=True)

    source = source_model(args, shape, classes)
    start = time.perf_counter()
    one_model = f16(source)
    one_first, _ = train(one_model, data, per_gpu, steps, None, first=True)
    peak_after_one = peaks()
    print(f"one_gpu: first epoch (compile included) {time.perf_counter() - start:.1f}s", flush=True)
    start = time.perf_counter()
    two_model = f16(source, two)
    two_first, _ = train(two_model, data, 2 * per_gpu, steps, two, first=True)
    print(f"two_gpus: first epoch (compile included) {time.perf_counter() - start:.1f}s", flush=True)
    start = time.perf_counter()
    rep_model = f16(source, two)
    rep_first, _ = train(rep_model, data, 2 * per_gpu, steps, two, first=True, statistics="replica")
    print(f"two_gpus_replica: first epoch (compile included) {time.perf_counter() - start:.1f}s", flush=True)

    runs = {"one_gpu": (one_model, per_gpu, None, "global"), "two_gpus": (two_model, 2 * per_gpu, two, "global"),
            "two_gpus_replica": (rep_model, 2 * per_gpu, two, "replica")}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for name, (model, batch, where, stats) in runs.items():
            s, last[name] = train(model, data, batch, steps, where, first=False, statistics=stats)
            seconds[name].append(s)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items()), flush=True)
    images = {name: steps * batch for name, (_, batch, _, _) in runs.items()}
    rates = {k: [images[k] / s for s in v] for k, v in seconds.items()}
    table = {k: {"median_img_s": statistics.median(v), "min_img_s": min(v), "max_img_s": max(v),
                 "epoch_s": seconds[k], "images_per_epoch": images[k]} for k, v in rates.items()}
    ratio = table["two_gpus"]["median_img_s"] / table["one_gpu"]["median_img_s"]
    ratio_replica = table["two_gpus_replica"]["median_img_s"] / table["one_gpu"]["median_img_s"]
    timed_state = {"one_gpu": scaling_state(one_model, last["one_gpu"]),
                   "two_gpus": {**scaling_state(two_model, last["two_gpus"]), "replicas_agree": replicas_agree(two_model)},
                   "two_gpus_replica": {**scaling_state(rep_model, last["two_gpus_replica"]),
                                        "replicas_agree": replicas_agree(rep_model)}}
    del one_model, two_model, rep_model, runs

    # results check: the same global batches (2 x per_gpu rows) on one GPU and on two
    start = time.perf_counter()
    ref = f16(source)
    _, ref_result = train(ref, data, 2 * per_gpu, check_steps, None, first=True, shuffle=False)
    par = f16(source, two)
    _, par_result = train(par, data, 2 * per_gpu, check_steps, two, first=True, shuffle=False)
    rep = f16(source, two)
    _, rep_result = train(rep, data, 2 * per_gpu, check_steps, two, first=True, shuffle=False, statistics="replica")
    check_replica = {**weights_apart(ref, rep), "replicas_agree": replicas_agree(rep), "two_gpus": scaling_state(rep, rep_result),
                     "loss": float(rep_result.history.history["loss"][-1])}
    check = {"steps": check_steps, "global_batch": 2 * per_gpu, **weights_apart(ref, par),
             "replicas_agree": replicas_agree(par),
             "one_gpu": scaling_state(ref, ref_result), "two_gpus": scaling_state(par, par_result),
             "loss": {"one_gpu": float(ref_result.history.history["loss"][-1]),
                      "two_gpus": float(par_result.history.history["loss"][-1])},
             "seconds": time.perf_counter() - start}
    peak_end = peaks()

    gib = lambda b: None if b is None else round(b / 2**30, 2)  # noqa: E731
    lines = [
        f"{'ResNet-8 16x16 (tiny)' if args.tiny else 'ResNet-50 224x224'} float16, continue_training defaults, "
        f"batch {per_gpu} per device, {steps} steps/epoch, {args.repeats} alternated repeats, {devices[0].device_kind}",
        "", "| run | median img/s | min | max | peak GiB per device |", "| --- | --- | --- | --- | --- |",
        f"| 1 device | {table['one_gpu']['median_img_s']:,.0f} | {table['one_gpu']['min_img_s']:,.0f} | "
        f"{table['one_gpu']['max_img_s']:,.0f} | {gib(peak_after_one[0])} |",
        f"| 2 devices, DataParallel | {table['two_gpus']['median_img_s']:,.0f} | {table['two_gpus']['min_img_s']:,.0f} | "
        f"{table['two_gpus']['max_img_s']:,.0f} | {gib(peak_end[0])} / {gib(peak_end[1])} |",
        f"| 2 devices, DataParallel, per-replica BatchNorm statistics | {table['two_gpus_replica']['median_img_s']:,.0f} | "
        f"{table['two_gpus_replica']['min_img_s']:,.0f} | {table['two_gpus_replica']['max_img_s']:,.0f} | (peak above) |",
        "", f"scaling: {ratio:.2f}x global statistics, {ratio_replica:.2f}x per-replica statistics (target >= 1.85: "
        f"{'met' if max(ratio, ratio_replica) >= 1.85 else 'NOT met'})",
        f"results check ({check_steps} steps, global batch {2 * per_gpu}): weights max |diff| "
        f"{check['max_abs_diff']:.3g}, relative L2 {check['relative_l2_diff']:.3g}; replicas hold the same bits: "
        f"{check['replicas_agree']}",
        f"loss scale per device {check['two_gpus']['loss_scale_per_device']} (one device: {check['one_gpu']['loss_scale']}); "
        f"skipped steps per device {check['two_gpus']['skipped_steps_per_device']} (one device: "
        f"{check['one_gpu']['skipped_steps']})",
        f"per-replica statistics against the one-device run: weights max |diff| {check_replica['max_abs_diff']:.3g}, "
        f"relative L2 {check_replica['relative_l2_diff']:.3g}; replicas hold the same bits: {check_replica['replicas_agree']}; "
        f"loss scale per device {check_replica['two_gpus']['loss_scale_per_device']}, skipped steps per device "
        f"{check_replica['two_gpus']['skipped_steps_per_device']}; last loss {check_replica['loss']:.4f} "
        f"(one device {check['loss']['one_gpu']:.4f})",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    payload = {
        "table": table, "ratio": ratio, "ratio_replica": ratio_replica, "target": 1.85,
        "first_epoch_s": {"one_gpu": one_first, "two_gpus": two_first, "two_gpus_replica": rep_first},
        "check_replica": check_replica,
        "peak_bytes": {"after_one_gpu_warmup": peak_after_one, "end": peak_end},
        "data_bytes": int(x.nbytes), "timed_runs": timed_state, "check": check, "text": text,
        "devices": [str(d) for d in devices], "device_kind": devices[0].device_kind,
        "jax": jax.__version__, "keras": keras.__version__, "tensorflow_imported": "tensorflow" in sys.modules,
        "args": vars(args), "wall_s": time.perf_counter() - started,
    }
    name = f"gpu_scaling{'_tiny' if args.tiny else ''}.json"
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) / name if os.environ.get("OUT")
                                           else Path(__file__).resolve().parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out} ({payload['wall_s']:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
