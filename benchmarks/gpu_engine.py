"""``continue_training`` on the GPU against plain Keras, in one process (JAX or torch backend).

Variants (batch 128, SGD(0.01, momentum 0.9), synthetic data of the real
shapes: uniform random uint8 images and random labels; throughput does not
depend on pixel values):

  keras_fp32_fit     Keras float32 ``fit`` on float32 images (what users run today)
  keras_fp32_spe     the same, compiled with ``steps_per_execution=--spe``
  keras_mixed_spe    Keras ``mixed_float16``, ``steps_per_execution=--spe``
  ct_f16             ``build_fp16_model(precision="float16")`` + ``continue_training``
                     with every default, on the same float32 images
  ct_f16_u8          the same on the uint8 images, ``Engine(input_scale=1/255)``
  ct_f16_streamed    the same, ``Engine("streamed", ...)``: host arrays streamed with prefetch
  ct_mixed           ``continue_training`` of the Keras ``mixed_float16`` model (same engine)
  ct_f16_u8_nosr     ct_f16_u8 with ``compensation=None`` (what the rounding costs, compile included)
  ct_f16_u8_nols     ct_f16_u8 with ``loss_scaling=False`` (what the loss-scale branch costs)
  ct_f16_streamed_p4 ct_f16_streamed with ``prefetch=4`` chunks in flight
  ct_f16_u8_spe1     ct_f16_u8 with ``steps_per_execution=1``: one step per call, no device loop
  engine_by_hand     ``fp16cont.training.engine.fit_with_engine`` called by hand on the
                     fp16cont model, without continue_training's checks and monitors

Each variant first runs one untimed epoch (its wall time, compilation
included but not the model's build, is reported as ``first_epoch_s``), then the variants are timed in
alternation, ``--repeats`` epochs each; an epoch is timed from its start to
the device having finished it. With ``--epochs-per-call N`` each timed call
trains N epochs and its last one is timed (steady state within a call: the
streamed mode's first chunk of an epoch is then prepared during the previous
epoch, as in any multi-epoch run). ``--memory VARIANT`` instead runs that one
variant for one epoch in this process and reports the device's peak bytes
(run each in a fresh process; ``XLA_PYTHON_CLIENT_PREALLOCATE=false``).

Run (GPU):   KERAS_BACKEND=jax python benchmarks/gpu_engine.py --model resnet50 --steps 40
Smoke (CPU): KERAS_BACKEND=jax python benchmarks/gpu_engine.py --model resnet20 --tiny
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
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from _timing import SyncedTimer, block  # noqa: E402  (benchmarks/_timing.py)
from fp16cont.training.engine import Engine, choose_engine, fit_with_engine  # noqa: E402
from fp16cont.training.train import prepare_optimizer  # noqa: E402

VARIANTS = ("keras_fp32_fit", "keras_fp32_spe", "keras_mixed_spe", "ct_f16", "ct_f16_u8", "ct_f16_streamed", "ct_mixed", "engine_by_hand",
            "ct_f16_u8_nosr", "ct_f16_streamed_p4", "ct_f16_u8_nols", "ct_f16_u8_spe1")
TARGETS = {  # numerator, denominator, target
    "resnet50": (("ct_f16", "keras_fp32_fit", 1.7), ("ct_f16", "keras_mixed_spe", 1.4), ("ct_f16", "ct_mixed", 1.0),
                 ("ct_f16_streamed", "ct_f16_u8", 0.9), ("ct_f16", "engine_by_hand", 0.97)),
    "resnet20": (("ct_f16", "keras_fp32_fit", 1.7), ("ct_f16", "keras_mixed_spe", 1.5), ("ct_f16", "ct_mixed", 1.0),
                 ("ct_f16_streamed", "ct_f16_u8", 0.9), ("ct_f16", "engine_by_hand", 0.97)),
}


def make_model(name: str, shape: tuple[int, ...], classes: int, policy: str | None = None) -> keras.Model:
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        if name == "resnet50":
            return keras.applications.ResNet50(weights=None, input_shape=shape, classes=classes)
        return fp16cont.resnet20(input_shape=shape, num_classes=classes)
    finally:
        keras.config.set_dtype_policy(previous)


def sgd() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)



def variants(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Callable[[Any], float]]]:
    shape, classes, bs = data["shape"], data["classes"], args.batch_size
    cache: dict[str, keras.Model] = {}

    def source() -> keras.Model:
        if "m" not in cache:
            m = make_model(args.model, shape, classes)
            m.compile(sgd(), "sparse_categorical_crossentropy", metrics=["accuracy"])
            cache["m"] = m
        return cache["m"]

    def keras_model(policy: str | None, spe: int) -> Callable[[], Any]:
        def setup() -> keras.Model:
            m = make_model(args.model, shape, classes, policy)
            m.set_weights(source().get_weights())
            m.compile(sgd(), "sparse_categorical_crossentropy", metrics=["accuracy"], steps_per_execution=spe)
            return m
        return setup

    def fit_epoch(m: keras.Model) -> float:
        timer = SyncedTimer()
        m.fit(data["x32"], data["y"], batch_size=bs, epochs=args.epochs_per_call, verbose=0, callbacks=[timer])
        return timer.seconds[-1]

    def f16() -> keras.Model:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fp16cont.build_fp16_model(source(), precision="float16")

    def ct_epoch(x_key: str, engine: Any = "auto", **kwargs: Any) -> Callable[[keras.Model], float]:
        def epoch(m: keras.Model) -> float:
            timer = SyncedTimer()
            result = fp16cont.continue_training(m, data[x_key], data["y"], epochs=args.epochs_per_call, batch_size=bs, verbose=0,
                                                callbacks=[timer], engine=engine, **kwargs)
            data.setdefault("engines", {})[id(m)] = result.engine
            return timer.seconds[-1]
        return epoch

    def by_hand_setup() -> keras.Model:
        m = f16()
        prepare_optimizer(m, None, None, None)
        return m

    def by_hand_epoch(m: keras.Model) -> float:
        timer = SyncedTimer()
        engine = Engine()
        fit_with_engine(m, data["x32"], data["y"], choice=choose_engine(engine, data["x32"], {}), engine=engine, epochs=args.epochs_per_call,
                        batch_size=bs, validation_data=None, callbacks=[timer], verbose=0, fit_kwargs={})
        return timer.seconds[-1]

    scale = Engine(input_scale=1 / 255)
    streamed = Engine("streamed", input_scale=1 / 255)
    return {
        "keras_fp32_fit": (keras_model(None, 1), fit_epoch),
        "keras_fp32_spe": (keras_model(None, args.spe), fit_epoch),
        "keras_mixed_spe": (keras_model("mixed_float16", args.spe), fit_epoch),
        "ct_f16": (f16, ct_epoch("x32")),
        "ct_f16_u8": (f16, ct_epoch("x8", scale)),
        "ct_f16_streamed": (f16, ct_epoch("x8", streamed)),
        "ct_mixed": (keras_model("mixed_float16", 1), ct_epoch("x32")),
        "ct_f16_u8_nosr": (f16, ct_epoch("x8", scale, compensation=None)),
        "ct_f16_u8_nols": (f16, ct_epoch("x8", scale, loss_scaling=False)),
        "ct_f16_streamed_p4": (f16, ct_epoch("x8", Engine("streamed", input_scale=1 / 255, prefetch=4))),
        "ct_f16_u8_spe1": (f16, ct_epoch("x8", Engine(steps_per_execution=1, input_scale=1 / 255))),
        "engine_by_hand": (by_hand_setup, by_hand_epoch),
    }


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    shape = (224, 224, 3) if args.model == "resnet50" else (32, 32, 3)
    classes = 1000 if args.model == "resnet50" else 10
    if args.tiny:
        shape, classes = (32, 32, 3), 10
    n = args.steps * args.batch_size
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return {"shape": shape, "classes": classes, "x8": x8, "x32": x8.astype(np.float32) / np.float32(255),
            "y": rng.integers(0, classes, n).astype(np.int32)}


def peak_bytes() -> int | None:
    if keras.backend.backend() == "jax":
        import jax

        return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    if keras.backend.backend() == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet50", "resnet20"), default="resnet20")
    parser.add_argument("--steps", type=int, default=None, help="batches per epoch (default 40 / 390)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--spe", type=int, default=32, help="Keras steps_per_execution of the *_spe variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs-per-call", type=int, default=1,
                        help="epochs per fit/continue_training call; the call's last epoch is the one timed")
    parser.add_argument("--memory", default=None, help="one variant: report its peak device bytes after one epoch")
    parser.add_argument("--tiny", action="store_true", help="32x32 images, batch 16, 4 steps: a CPU smoke test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_size, args.steps = 16, args.steps or 4
    args.steps = args.steps or (40 if args.model == "resnet50" else 390)
    names = [v for v in (args.memory or args.variants).split(",") if v]
    data = synthetic(args)
    table = variants(args, data)
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / f"gpu_engine_{args.model}{'_mem_' + args.memory if args.memory else ''}.json")
    if args.memory:
        setup, epoch = table[args.memory]
        model = setup()
        first = time.perf_counter()  # the first epoch, compilation included, not the model's build
        epoch(model)
        payload = {"variant": args.memory, "peak_bytes": peak_bytes(), "first_epoch_s": time.perf_counter() - first}
        print(json.dumps(payload))
        out.write_text(json.dumps(payload, indent=2))
        return 0
    models, first_epoch, seconds = {}, {}, {name: [] for name in names}
    for name in names:
        setup, epoch = table[name]
        start = time.perf_counter()
        models[name] = setup()
        built = time.perf_counter()
        epoch(models[name])
        first_epoch[name] = time.perf_counter() - built
        print(f"{name}: model ready in {built - start:.1f}s, first epoch (compile included) {first_epoch[name]:.1f}s", flush=True)
    for repeat in range(args.repeats):
        for name in names:
            seconds[name].append(table[name][1](models[name]))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    images = args.steps * args.batch_size
    rows = {name: {"median_img_s": statistics.median(images / s for s in seconds[name]),
                   "min_img_s": min(images / s for s in seconds[name]), "max_img_s": max(images / s for s in seconds[name]),
                   "first_epoch_s": round(first_epoch[name], 2)} for name in names}
    engines = {name: data.get("engines", {}).get(id(models[name])) for name in names}
    lines = [f"{args.model}, batch {args.batch_size}, {args.steps} steps/epoch, {args.repeats} alternated repeats, {args.epochs_per_call} epoch(s) per call (last timed), "
             f"backend {keras.backend.backend()}", "", "| variant | engine | median img/s | min | max | first epoch s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {engines[name] or '-'} | {row['median_img_s']:,.0f} | {row['min_img_s']:,.0f} | "
                     f"{row['max_img_s']:,.0f} | {row['first_epoch_s']} |")
    lines += ["", "| ratio | value | target | met |", "| --- | --- | --- | --- |"]
    ratios = []
    for num, den, target in TARGETS[args.model]:
        if num in rows and den in rows:
            value = rows[num]["median_img_s"] / rows[den]["median_img_s"]
            ratios.append({"ratio": f"{num} / {den}", "value": value, "target": target})
            lines.append(f"| {num} / {den} | {value:.2f}x | >= {target} | {'yes' if value >= target else 'NO'} |")
    text = "\n".join(lines)
    print(text, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratios": ratios, "engines": engines, "args": vars(args), "table": text,
                               "keras": keras.__version__}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
