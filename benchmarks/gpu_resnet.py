"""Training throughput of ResNet-50 / ResNet-20 on the JAX backend: Keras fit vs fp16cont.

In ONE process, alternating and repeating the variants (run-to-run noise on a
shared GPU is about +-12%):

  keras_fp32_fit       plain Keras float32 ``fit`` (TF32 on the GPU)
  keras_mixed_fit      plain Keras ``mixed_float16`` ``fit`` (global policy set
                       only while that model is built, then restored)
  fp16cont_f16_fit     fp16cont pure float16: ``build_fp16_model`` +
                       ``continue_training`` (the normal ``fit`` path, with its
                       NaN guard, loss-scale and stagnation callbacks)
  fp16cont_f32_device  fp16cont ``device_fit`` of the float32 model
  fp16cont_f16_device  fp16cont ``device_fit`` of the pure float16 model

and, with ``--levers``, what each lever of ``device_fit`` buys:

  f16_device_spe1      one training step per compiled call (no scan)
  f16_device_nodonate  state not donated to the compiled step
  f16_device_f32data   float32 images resident (normalised on the host)
                       instead of uint8 cast and scaled on the device
  f16_device_nocomp    no Kahan compensation / stagnation counters
                       (``compensation=None``; loss scaling kept)
  keras_f16policy_fit  plain Keras ``float16`` policy ``fit``

The data is SYNTHETIC: uniform random uint8 images of the real shapes
(ImageNet 224x224x3 / CIFAR 32x32x3) and random labels; throughput does not
depend on pixel values. Fit variants get the float32 array normalised on the
host (what a Keras user feeds); ``device_fit`` variants get the uint8 array,
uploaded once. Every variant uses SGD(0.01, momentum 0.9), batch 128, a
shuffled epoch of ``--steps`` batches; compilation and warm-up are excluded:
each variant first trains one untimed epoch, then each repeat times one epoch
from its first dispatch until the device has finished (epoch-end sync).

Run (GPU):   KERAS_BACKEND=jax python benchmarks/gpu_resnet.py --model resnet50 --repeats 3 --steps 40
Debug (CPU): KERAS_BACKEND=jax python benchmarks/gpu_resnet.py --model resnet20 --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from fp16cont.device_loop import device_fit, upload  # noqa: E402

CORE = ("keras_fp32_fit", "keras_mixed_fit", "fp16cont_f16_fit", "fp16cont_f32_device", "fp16cont_f16_device")
LEVERS = (
    "f16_device_spe1",
    "f16_device_nodonate",
    "f16_device_f32data",
    "f16_device_nocomp",
    "keras_f16policy_fit",
)

TARGETS = {  # (numerator, denominator, target ratio, label)
    "resnet50": (
        ("fp16cont_f16_device", "keras_fp32_fit", 2.0, "fp16cont f16 / Keras fp32 fit"),
        ("fp16cont_f16_device", "keras_mixed_fit", 1.15, "fp16cont f16 / Keras mixed_float16 fit"),
        ("fp16cont_f16_device", "fp16cont_f32_device", 1.6, "fp16cont f16 / fp16cont f32 (both device_fit)"),
    ),
    "resnet20": (
        ("fp16cont_f16_device", "keras_fp32_fit", 1.5, "fp16cont f16 / Keras fp32 fit"),
        ("fp16cont_f16_device", "keras_mixed_fit", 1.5, "fp16cont f16 / Keras mixed_float16 fit"),
        ("fp16cont_f16_device", "fp16cont_f32_device", 1.6, "fp16cont f16 / fp16cont f32 (both device_fit)"),
    ),
}
EXTRA_RATIOS = (
    ("fp16cont_f16_fit", "keras_fp32_fit", "fp16cont f16 fit path / Keras fp32 fit"),
    ("fp16cont_f16_fit", "keras_mixed_fit", "fp16cont f16 fit path / Keras mixed_float16 fit"),
    ("fp16cont_f32_device", "keras_fp32_fit", "device_fit f32 / Keras fp32 fit (input path alone)"),
    ("fp16cont_f16_device", "fp16cont_f16_fit", "device_fit f16 / fp16cont f16 fit path"),
)


# -- models ------------------------------------------------------------------
def cifar_resnet20(input_shape: tuple[int, int, int], classes: int) -> keras.Model:
    """ResNet-20 (He et al. 2016, sec. 4.2); fp16cont.models.resnet20 when it exists."""
    builder = getattr(fp16cont, "resnet20", None)
    if builder is not None:
        return builder(input_shape=input_shape, num_classes=classes)
    inputs = keras.Input(input_shape)

    def conv_bn(h: Any, filters: int, strides: int, size: int = 3) -> Any:
        h = keras.layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal")(h)
        return keras.layers.BatchNormalization()(h)

    h = keras.layers.ReLU()(conv_bn(inputs, 16, 1))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage and not block else 1
            y = keras.layers.ReLU()(conv_bn(h, filters, strides))
            y = conv_bn(y, filters, 1)
            if strides != 1 or h.shape[-1] != filters:
                h = conv_bn(h, filters, strides, 1)
            h = keras.layers.ReLU()(keras.layers.Add()([h, y]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(h), name="resnet20")


def make_model(name: str, shape: tuple[int, int, int], classes: int, policy: str | None = None) -> keras.Model:
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        if name == "resnet50":
            return keras.applications.ResNet50(weights=None, input_shape=shape, classes=classes)
        return cifar_resnet20(shape, classes)
    finally:
        keras.config.set_dtype_policy(previous)


def sgd() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)


# -- timing ------------------------------------------------------------------
def block(model: keras.Model) -> None:
    import jax

    jax.block_until_ready([v.value for v in model.trainable_variables])


class SyncedEpochTimer(keras.callbacks.Callback):
    """Epoch wall time up to the device having finished the epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        block(self.model)
        self.seconds.append(time.perf_counter() - self._start)


class Variant:
    """One way of training; ``setup`` builds and compiles, ``epoch`` times one epoch."""

    def __init__(self, name: str, setup: Callable[[], Any], epoch: Callable[[Any], float]) -> None:
        self.name, self._setup, self._epoch = name, setup, epoch
        self.state: Any = None
        self.seconds: list[float] = []
        self.notes: dict[str, Any] = {}

    def setup(self) -> None:
        start = time.perf_counter()
        self.state = self._setup()
        self.notes["setup_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        self._epoch(self.state)  # compile + warm-up
        self.notes["warmup_epoch_s"] = round(time.perf_counter() - start, 2)

    def time_epoch(self) -> float:
        seconds = self._epoch(self.state)
        self.seconds.append(seconds)
        return seconds


def build_variants(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Variant]:
    shape, classes, bs, steps = data["shape"], data["classes"], args.batch_size, args.steps
    spe = args.spe or steps
    source_cache: dict[str, keras.Model] = {}

    def source() -> keras.Model:
        if "m" not in source_cache:
            m = make_model(args.model, shape, classes)
            m.compile(sgd(), "sparse_categorical_crossentropy", metrics=["accuracy"])
            source_cache["m"] = m
        return source_cache["m"]

    def fit_setup(policy: str | None) -> Callable[[], Any]:
        def setup() -> Any:
            m = make_model(args.model, shape, classes, policy)
            m.compile(sgd(), "sparse_categorical_crossentropy", metrics=["accuracy"])
            return m

        return setup

    def fit_epoch(m: keras.Model) -> float:
        timer = SyncedEpochTimer()
        m.fit(data["x32"], data["y"], batch_size=bs, epochs=1, shuffle=True, verbose=0, callbacks=[timer])
        return timer.seconds[-1]

    def f16_fit_setup() -> Any:
        return fp16cont.build_fp16_model(source(), precision="float16")

    def f16_fit_epoch(m: keras.Model) -> float:
        timer = SyncedEpochTimer()
        fp16cont.continue_training(m, data["x32"], data["y"], epochs=1, batch_size=bs, verbose=0, callbacks=[timer])
        return timer.seconds[-1]

    def device_setup(precision: str) -> Callable[[], Any]:
        def setup() -> Any:
            if precision == "float32":
                m = make_model(args.model, shape, classes)
                m.set_weights(source().get_weights())
                m.compile(sgd(), "sparse_categorical_crossentropy", metrics=["accuracy"])
                return m
            return fp16cont.build_fp16_model(source(), precision=precision)

        return setup

    def device_epoch(**kwargs: Any) -> Callable[[keras.Model], float]:
        key = "x32_dev" if kwargs.pop("f32data", False) else "x8_dev"
        kwargs.setdefault("steps_per_execution", spe)

        def epoch(m: keras.Model) -> float:
            result = device_fit(m, data[key], data["y_dev"], epochs=1, batch_size=bs, shuffle_seed=0, **kwargs)
            return result.epoch_seconds[-1]

        return epoch

    every = {
        "keras_fp32_fit": Variant("keras_fp32_fit", fit_setup(None), fit_epoch),
        "keras_mixed_fit": Variant("keras_mixed_fit", fit_setup("mixed_float16"), fit_epoch),
        "fp16cont_f16_fit": Variant("fp16cont_f16_fit", f16_fit_setup, f16_fit_epoch),
        "fp16cont_f32_device": Variant("fp16cont_f32_device", device_setup("float32"), device_epoch()),
        "fp16cont_f16_device": Variant("fp16cont_f16_device", device_setup("float16"), device_epoch()),
        "f16_device_spe1": Variant("f16_device_spe1", device_setup("float16"), device_epoch(steps_per_execution=1)),
        "f16_device_nodonate": Variant("f16_device_nodonate", device_setup("float16"), device_epoch(donate=False)),
        "f16_device_f32data": Variant("f16_device_f32data", device_setup("float16"), device_epoch(f32data=True)),
        "f16_device_nocomp": Variant("f16_device_nocomp", device_setup("float16"), device_epoch(compensation=None)),
        "keras_f16policy_fit": Variant("keras_f16policy_fit", fit_setup("float16"), fit_epoch),
    }
    return {name: every[name] for name in args.variant_names}


# -- data --------------------------------------------------------------------
def synthetic(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    shape = (224, 224, 3) if args.model == "resnet50" else (32, 32, 3)
    classes = 1000 if args.model == "resnet50" else 10
    if args.tiny:
        shape, classes = (32, 32, 3), 10
    n = args.steps * args.batch_size
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, n).astype(np.int32)
    data: dict[str, Any] = {"shape": shape, "classes": classes, "x8": x8, "y": y}
    if any("fit" in v for v in names) or "f16_device_f32data" in names:
        data["x32"] = x8.astype(np.float32) / np.float32(255.0)
    if any("device" in v for v in names):
        data["x8_dev"], data["y_dev"] = upload(x8), upload(y)
        if "f16_device_f32data" in names:
            data["x32_dev"] = upload(data["x32"])
    return data


# -- report ------------------------------------------------------------------
def summarise(variants: dict[str, Variant], args: argparse.Namespace) -> dict[str, Any]:
    images = args.steps * args.batch_size
    rows = {}
    for name, v in variants.items():
        if not v.seconds:
            rows[name] = {"error": v.notes.get("error"), **v.notes}
            continue
        rates = [images / s for s in v.seconds]
        rows[name] = {
            "median_img_s": statistics.median(rates),
            "min_img_s": min(rates),
            "max_img_s": max(rates),
            "epoch_seconds": v.seconds,
            **v.notes,
        }
    def rate(name: str) -> float | None:
        return rows.get(name, {}).get("median_img_s")

    ratios = []
    for num, den, target, label in TARGETS[args.model]:
        if rate(num) and rate(den):
            r = rate(num) / rate(den)
            ratios.append({"ratio": label, "value": r, "target": target, "met": r >= target})
    for num, den, label in EXTRA_RATIOS:
        if rate(num) and rate(den):
            ratios.append({"ratio": label, "value": rate(num) / rate(den), "target": None, "met": None})
    return {"rows": rows, "ratios": ratios}


def render(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"model {args.model}{' (tiny)' if args.tiny else ''}, batch {args.batch_size}, {args.steps} steps/epoch, "
        f"{args.repeats} timed epochs per variant (alternated), SYNTHETIC uint8 data",
        "",
        "| variant | median img/s | min | max | warm-up epoch s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in summary["rows"].items():
        if "median_img_s" not in row:
            why = f"failed: {row['error']}" if row.get("error") else "not timed (stopped before its repeats)"
            lines.append(f"| {name} | {why} | | | |")
            continue
        lines.append(
            f"| {name} | {row['median_img_s']:,.0f} | {row['min_img_s']:,.0f} | {row['max_img_s']:,.0f} | {row.get('warmup_epoch_s')} |"
        )
    lines += ["", "| ratio | value | target | met |", "| --- | --- | --- | --- |"]
    for r in summary["ratios"]:
        target = "" if r["target"] is None else f">= {r['target']}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"| {r['ratio']} | {r['value']:.2f}x | {target} | {met} |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import jax

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "jax": jax.__version__,
        "backend": keras.backend.backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "data": "synthetic uint8 images, random labels",
    }
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet50", "resnet20"), default="resnet20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="batches per timed epoch (default 40 / 390)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--spe", type=int, default=None, help="device_fit steps_per_execution (default: --steps)")
    parser.add_argument("--variants", default=",".join(CORE), help="comma-separated; see the module doc")
    parser.add_argument("--levers", action="store_true", help="add the lever variants")
    parser.add_argument("--tiny", action="store_true", help="tiny images, batch 16, 2 steps: a CPU smoke test")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_resnet_<model>.json)")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        print(f"This benchmark needs KERAS_BACKEND=jax (got {keras.backend.backend()}).", file=sys.stderr)
        return 2
    if args.tiny:
        args.batch_size, args.steps = 16, args.steps or 2
    args.steps = args.steps or (40 if args.model == "resnet50" else 390)
    names = [v for v in args.variants.split(",") if v] + (list(LEVERS) if args.levers else [])
    unknown = [v for v in names if v not in CORE + LEVERS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    args.variant_names = list(dict.fromkeys(names))
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / f"gpu_resnet_{args.model}{'_tiny' if args.tiny else ''}.json")

    t0 = time.perf_counter()
    data = synthetic(args, args.variant_names)
    print(f"data ready in {time.perf_counter() - t0:.1f}s: {len(data['y'])} images {data['shape']}", flush=True)
    variants = build_variants(args, data)

    def save() -> dict[str, Any]:
        summary = summarise(variants, args)
        payload = {"args": {k: v for k, v in vars(args).items()}, "environment": environment(), **summary,
                   "elapsed_s": round(time.perf_counter() - t0, 1)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=str))
        return summary

    for name, v in variants.items():
        try:
            v.setup()
            print(f"setup {name}: build {v.notes['setup_s']}s, warm-up epoch {v.notes['warmup_epoch_s']}s", flush=True)
        except Exception as err:  # keep measuring the others
            v.notes["error"] = f"{type(err).__name__}: {err}"[:500]
            traceback.print_exc()
            print(f"setup {name} FAILED: {v.notes['error']}", flush=True)
        save()
    live = [v for v in variants.values() if "error" not in v.notes]
    for repeat in range(args.repeats):
        shift = repeat % max(len(live), 1)
        for v in live[shift:] + live[:shift]:  # rotate the order each repeat
            seconds = v.time_epoch()
            print(f"repeat {repeat + 1} {v.name}: {args.steps * args.batch_size / seconds:,.0f} img/s ({seconds:.3f}s)", flush=True)
        save()
    summary = save()
    print(render(summary, args), flush=True)
    print(f"JSON: {out}  (total {time.perf_counter() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
