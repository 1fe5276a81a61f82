"""Update-step speed on CPU: the 3xDense-1024 MLP, float32 fit vs each compensation.

Every measurement runs in a fresh process; variants alternate and repeat, and
the table reports the median and range of samples/s over one epoch of
``--samples`` samples, timed after a warm-up call that compiles everything.

Variants (TensorFlow backend unless KERAS_BACKEND says otherwise, batch 128,
SGD 0.01 with momentum 0.9, synthetic data):
  float32      plain Keras compile + fit of the float32 model
  kahan        build_fp16_model + continue_training(compensation="kahan")
  none         the same with compensation="none" (float32 arithmetic, round to nearest)
  stochastic   the same with compensation="stochastic" (counter-based stochastic rounding)
  plain        the same with compensation=None (Keras' optimizer as is)

``--update-only`` times the optimizer update alone instead: one
``CompensatedOptimizer(SGD(0.01, momentum=0.9))`` step on 16-bit variables of
the MLP's shapes (2.9 M parameters) with fixed gradients, in one process,
variants alternating, median milliseconds per step.

Run:  python benchmarks/mlp_update_speed.py --repeats 3
      python benchmarks/mlp_update_speed.py --update-only --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = ("float32", "kahan", "none", "stochastic")
ROOT = Path(__file__).resolve().parents[1]


def child(variant: str, precision: str, samples: int, batch: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import time

    import keras
    import numpy as np

    import fp16cont

    keras.utils.set_random_seed(0)
    source = fp16cont.mlp(784)
    rng = np.random.default_rng(0)
    x = rng.random((samples, 784), dtype=np.float32)
    y = rng.integers(0, 10, samples)
    loss = "sparse_categorical_crossentropy"
    optimizer = lambda: keras.optimizers.SGD(0.01, momentum=0.9)  # noqa: E731
    if variant == "float32":
        source.compile(optimizer(), loss)
        source.fit(x[: 4 * batch], y[: 4 * batch], batch_size=batch, epochs=1, verbose=0)
        start = time.perf_counter()
        source.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        wall = time.perf_counter() - start
    else:
        model = fp16cont.build_fp16_model(source, precision=precision, verify=False)
        compensation = None if variant == "plain" else variant
        kwargs = dict(batch_size=batch, loss=loss, compensation=compensation, verbose=0, shuffle=False)
        fp16cont.continue_training(model, x[: 4 * batch], y[: 4 * batch], epochs=1, optimizer=optimizer(), **kwargs)
        start = time.perf_counter()
        fp16cont.continue_training(model, x, y, epochs=1, **kwargs)
        wall = time.perf_counter() - start
    return {"variant": variant, "samples_per_s": samples / wall, "backend": keras.backend.backend()}


def update_only(variants: list[str], precision: str, repeats: int, steps: int = 20) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import time

    import keras
    import numpy as np

    from fp16cont.optim.compensation import CompensatedOptimizer

    shapes = [(784, 1024), (1024,), (1024, 1024), (1024,), (1024, 1024), (1024,), (1024, 10), (10,)]
    rng = np.random.default_rng(0)
    steps_of = {}
    for variant in variants:
        if variant in ("float32", "plain"):
            continue
        variables = [keras.Variable(rng.random(s, dtype=np.float32) * 0.1, dtype=precision) for s in shapes]
        grads = [keras.ops.convert_to_tensor(rng.random(s, dtype=np.float32) * 1e-3) for s in shapes]
        opt = CompensatedOptimizer(keras.optimizers.SGD(0.01, momentum=0.9), variant)
        opt.apply(grads, variables)  # builds and compiles
        steps_of[variant] = (opt, grads, variables)
    times: dict[str, list[float]] = {v: [] for v in steps_of}
    for _ in range(repeats):
        for variant, (opt, grads, variables) in steps_of.items():
            start = time.perf_counter()
            for _ in range(steps):
                opt.apply(grads, variables)
            keras.ops.convert_to_numpy(variables[0].value)
            times[variant].append((time.perf_counter() - start) / steps * 1000)
    print(f"| update of 2.9 M {precision} parameters | ms per step, median | range |")
    print("| --- | --- | --- |")
    for variant, values in times.items():
        print(f"| {variant} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=(*VARIANTS, "plain"))
    parser.add_argument("--precision", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=12800)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--update-only", action="store_true", help="time the optimizer update alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.update_only:
        update_only(args.variants, args.precision, args.repeats)
        return
    if args.child:
        print(json.dumps(child(args.child, args.precision, args.samples, args.batch)))
        return
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"), "PYTHONPATH": str(ROOT)}
    rates: dict[str, list[float]] = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:  # alternate: one of each per round
            cmd = [sys.executable, __file__, "--child", variant, "--precision", args.precision,
                   "--samples", str(args.samples), "--batch", str(args.batch)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rate = json.loads(out.strip().splitlines()[-1])["samples_per_s"]
            rates[variant].append(rate)
            print(f"round {repeat}: {variant:<11} {rate:,.0f} samples/s", flush=True)
    base = statistics.median(rates[args.variants[0]])
    print(f"\n| variant ({args.precision}) | samples/s median | range | vs {args.variants[0]} |")
    print("| --- | --- | --- | --- |")
    for variant, values in rates.items():
        med = statistics.median(values)
        print(f"| {variant} | {med:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
