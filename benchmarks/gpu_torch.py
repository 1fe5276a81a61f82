"""``continue_training`` on Keras' torch backend against Keras ``fit``, in one process.

Variants (ResNet-20 on 32x32x3, batch 128, SGD(0.01, momentum 0.9),
synthetic data: uniform random images normalised to [0, 1] on the host as
float32, random labels; throughput does not depend on pixel values):

  keras_fp32_fit    Keras float32 ``fit`` (what users run today)
  keras_mixed_fit   Keras ``mixed_float16`` ``fit`` (Keras' own loss scaling)
  ct_f16            ``build_fp16_model(precision="float16")`` + ``continue_training`` with
                    every default (stochastic rounding, dynamic loss scaling, NaN guard)
  hand_f16          the same float16 model, compiled by hand with plain SGD and ``fit``
                    (no compensation, no loss scaling: the floor of the 16-bit step)
  ct_f16_nols       ``continue_training`` defaults but ``loss_scaling=False``
  ct_f16_kahan      ``continue_training`` with ``compensation="kahan"``
  keras_fp32_jit    Keras float32 ``fit`` with ``jit_compile=True`` (Keras' ``torch.compile`` of the step;
                    measured slower than eager on this model: dynamo recompiles as Keras' name
                    counters change every step)

Every variant first trains one untimed epoch (its wall time, compilation and
the first CUDA kernels included, is ``first_epoch_s``); then the variants
are timed in alternation, ``--repeats`` epochs each, each epoch from its
start until the GPU has finished it (``torch.cuda.synchronize``). Medians,
minima and maxima in img/s; the ratios the engine issue asks for
(``ct_f16`` >= 1.0x ``keras_fp32_fit``) are printed and written to the JSON.
fp16cont must not import TensorFlow here: the JSON records whether its
TensorFlow module was loaded.

Run (GPU, Keras 3.15 + torch, no TensorFlow; about 3-4 minutes):
    KERAS_BACKEND=torch python benchmarks/gpu_torch.py
Smoke test on a CPU (seconds):
    KERAS_BACKEND=torch python benchmarks/gpu_torch.py --tiny
The JSON goes to ``$OUT/gpu_torch.json`` when ``$OUT`` is set (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from _timing import SyncedTimer, block  # noqa: E402  (benchmarks/_timing.py)

DEFAULT_VARIANTS = ("keras_fp32_fit", "keras_mixed_fit", "ct_f16", "hand_f16")
ALL_VARIANTS = (*DEFAULT_VARIANTS, "ct_f16_nols", "ct_f16_kahan", "keras_fp32_jit")
TARGETS = (("ct_f16", "keras_fp32_fit", 1.0), ("ct_f16", "keras_mixed_fit", 1.0), ("ct_f16", "hand_f16", 0.97))


def sgd() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()



def make_resnet20(shape: tuple[int, ...], policy: str | None = None) -> keras.Model:
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return fp16cont.resnet20(input_shape=shape, num_classes=10)
    finally:
        keras.config.set_dtype_policy(previous)  # process-global: never left changed


def build_variants(args: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[SyncedTimer], Any]]:
    """``name -> run(timer)``: each call trains one epoch of its own model, timed by ``timer``."""
    shape = tuple(x.shape[1:])
    source = make_resnet20(shape)
    source.compile(sgd(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    weights = source.get_weights()
    loss = "sparse_categorical_crossentropy"
    models: dict[str, keras.Model] = {}
    info: dict[str, Any] = {}

    def keras_fit(policy: str | None, jit: bool = False) -> Callable[[SyncedTimer], Any]:
        def run(timer: SyncedTimer) -> None:
            key = f"keras_{policy}_{jit}"
            if key not in models:
                m = make_resnet20(shape, policy)
                m.set_weights(weights)
                m.compile(sgd(), loss, metrics=["accuracy"], jit_compile=jit or "auto")  # mixed: Keras' LossScaleOptimizer
                models[key] = m
            models[key].fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])

        return run

    def fp16_model() -> keras.Model:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # float16 on a CPU (--tiny) warns that it is slow
            return fp16cont.build_fp16_model(source, precision=args.precision, verify=False)

    def ct(name: str, **kwargs: Any) -> Callable[[SyncedTimer], Any]:
        def run(timer: SyncedTimer) -> None:
            if name not in models:
                models[name] = fp16_model()
            result = fp16cont.continue_training(
                models[name], x, y, epochs=1, batch_size=args.batch_size, optimizer=sgd() if name not in info else None,
                loss=loss if name not in info else None, metrics=["accuracy"] if name not in info else None,
                verbose=0, callbacks=[timer], **kwargs,
            )
            info[name] = {"engine": result.engine, "engine_reason": result.engine_reason, "compensation": result.compensation,
                          "loss_scale": result.loss_scale, "precision": result.precision}

        return run

    def hand(timer: SyncedTimer) -> None:
        if "hand" not in models:
            m = fp16_model()
            m.compile(sgd(), loss, metrics=["accuracy"])
            models["hand"] = m
        models["hand"].fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])

    table = {
        "keras_fp32_fit": keras_fit(None),
        "keras_mixed_fit": keras_fit("mixed_float16"),
        "ct_f16": ct("ct_f16"),
        "hand_f16": hand,
        "ct_f16_nols": ct("ct_f16_nols", loss_scaling=False),
        "ct_f16_kahan": ct("ct_f16_kahan", compensation="kahan"),
        "keras_fp32_jit": keras_fit(None, jit=True),
    }
    build_variants.info = info  # type: ignore[attr-defined]
    return {name: table[name] for name in args.variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="batches per timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="float16")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, of {ALL_VARIANTS}")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (CPU): 3 steps of 8 images of 16x16")
    parser.add_argument("--json", type=Path, help="where to write the results (default: $OUT/gpu_torch.json if $OUT is set)")
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(ALL_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    if keras.backend.backend() != "torch":
        parser.error(f"run with KERAS_BACKEND=torch (this process uses {keras.backend.backend()!r})")
    side = 32
    if args.tiny:
        args.steps, args.batch_size, args.repeats, side = 3, 8, 2, 16
        if args.precision == "float16":
            args.precision = "bfloat16"  # float16 convolutions on a CPU are far too slow for a smoke test

    import torch

    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = (rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8).astype(np.float32) / 255.0)
    y = rng.integers(0, 10, n).astype(np.int32)
    runs = build_variants(args, x, y)
    seconds: dict[str, list[float]] = {v: [] for v in runs}
    first: dict[str, float] = {}
    for name, run in runs.items():  # untimed first epoch: compilation, autotuning, first kernels
        timer = SyncedTimer()
        start = time.perf_counter()
        run(timer)
        synchronize()
        first[name] = time.perf_counter() - start
        print(f"{name}: first epoch {first[name]:.1f} s", flush=True)
    order = list(runs)
    for repeat in range(args.repeats):
        for name in order[repeat % len(order):] + order[: repeat % len(order)]:  # rotate the order each repeat
            timer = SyncedTimer()
            runs[name](timer)
            seconds[name].extend(timer.seconds)
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {n / timer.seconds[-1]:,.0f} img/s", flush=True)

    rates = {name: [n / s for s in values] for name, values in seconds.items()}
    summary = {name: {"median": statistics.median(r), "min": min(r), "max": max(r), "first_epoch_s": first[name]}
               for name, r in rates.items()}
    ratios = {f"{a}/{b}": {"ratio": summary[a]["median"] / summary[b]["median"], "target": t}
              for a, b, t in TARGETS if a in summary and b in summary}
    print()
    print("| variant | median img/s | min | max | first epoch s |")
    print("| --- | --- | --- | --- | --- |")
    for name, s in summary.items():
        print(f"| {name} | {s['median']:,.0f} | {s['min']:,.0f} | {s['max']:,.0f} | {s['first_epoch_s']:.1f} |")
    print()
    for key, r in ratios.items():
        print(f"{key}: {r['ratio']:.2f}x (target >= {r['target']}x: {'met' if r['ratio'] >= r['target'] else 'missed'})")
    info = getattr(build_variants, "info", {})
    for name, i in info.items():
        print(f"{name}: engine={i['engine']!r} ({i['engine_reason']}), compensation={i['compensation']}, loss scale {i['loss_scale']}")
    tf_imported = "tensorflow" in sys.modules  # Keras' set_random_seed imports it where it is installed
    fp16cont_tf = "fp16cont._tensorflow" in sys.modules
    print(f"TensorFlow imported: {tf_imported} (by fp16cont's TensorFlow module: {fp16cont_tf})")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    out = {
        "benchmark": "gpu_torch", "device": device, "keras": keras.__version__, "torch": torch.__version__,
        "model": "resnet20", "image_side": side, "batch_size": args.batch_size, "steps": args.steps,
        "repeats": args.repeats, "precision": args.precision, "tiny": args.tiny,
        "img_per_s": rates, "summary": summary, "ratios": ratios, "continue_training": info,
        "tensorflow_imported": tf_imported, "fp16cont_tensorflow_module_imported": fp16cont_tf,
    }
    path = args.json or (Path(os.environ["OUT"]) / "gpu_torch.json" if os.environ.get("OUT") else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
