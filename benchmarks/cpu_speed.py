"""CPU training speed and memory: float32 vs fp16cont vs Keras mixed precision vs the paper's recipe.

Every measurement runs in a fresh process (variants alternate, each repeated),
and the table reports medians of steady-state images/s (the first, compiling
epoch is excluded), the ratio to float32, weight + optimizer bytes and the
peak growth of resident memory during training.

Variants (TensorFlow backend, batch 128, SGD 0.01, synthetic data of the
model's input shape: throughput does not depend on pixel values):
  float32            plain Keras compile + fit
  keras-mixed        plain Keras, global policy mixed_bfloat16 (set in the child process only)
  paper              the paper's recipe: set_floatx(bfloat16), rebuild, cast weights, compile + fit
  fp16cont           build_fp16_model + continue_training (auto precision, Kahan-compensated, XLA-fused update)
  fp16cont-plain     the same with compensation=None
  fp16cont-by-hand   the fp16cont model trained with hand-written compile + fit (overhead baseline)
Further variants (--variants): fp16cont-by-hand-sr (hand-written compile + fit with the same
optimizer chain continue_training builds: CompensatedOptimizer(SGD, "stochastic")), fp16cont-spe1
(continue_training with Engine(steps_per_execution=1)), fp16cont-noguard (nan_guard=False),
fp16cont-xla (the model compiled with jit_compile=True first; continue_training keeps it),
float32-ct (the float32 model through continue_training).

Run:  python benchmarks/cpu_speed.py --model resnet20 --repeats 3
      (``--model text_lstm``: token ids through Embedding and Bidirectional(LSTM), whose gradient
      is an ``IndexedSlices``)
Other backends and a fixed set of cores (each child process is pinned with ``taskset``; JAX runs on its CPU
platform, torch with no CUDA device visible):
      python benchmarks/cpu_speed.py --model mlp --backend jax --cpus 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = ("float32", "keras-mixed", "paper", "fp16cont", "fp16cont-plain", "fp16cont-by-hand")
MORE_VARIANTS = ("fp16cont-by-hand-sr", "fp16cont-spe1", "fp16cont-noguard", "fp16cont-xla", "float32-ct")
ROOT = Path(__file__).resolve().parents[1]


TEXT_VOCABULARY = 2000


def text_lstm():
    """A text classifier: token ids -> Embedding(2000, 64) -> Bidirectional(LSTM(64)) -> 10 classes."""
    import keras

    tokens = keras.Input((40,), dtype="int32")
    h = keras.layers.Embedding(TEXT_VOCABULARY, 64)(tokens)
    h = keras.layers.Bidirectional(keras.layers.LSTM(64))(h)
    return keras.Model(tokens, keras.layers.Dense(10, activation="softmax")(h), name="text_lstm")


OPTIMIZERS = {"sgd": ("SGD", 0.01), "adam": ("Adam", 1e-3), "rmsprop": ("RMSprop", 1e-3)}


def make_optimizer(name: str):
    """A fresh Keras optimizer: SGD 0.01 (the paper's), Adam or RMSprop 1e-3."""
    import keras

    cls, rate = OPTIMIZERS[name]
    return getattr(keras.optimizers, cls)(rate)


def child(model_name: str, variant: str, batch: int, steps: int, epochs: int, optimizer: str = "sgd") -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import time

    import keras
    import numpy as np

    import fp16cont
    from fp16cont.reporting.memory import peak_memory_growth, start_peak_memory
    from fp16cont.training.engine import Engine
    from fp16cont.convert.rebuild import weight_bytes

    build = {"resnet20": fp16cont.resnet20, "resnet56": fp16cont.resnet56, "mlp": lambda: fp16cont.mlp(784),
             "text_lstm": text_lstm}[model_name]
    keras.utils.set_random_seed(0)
    if variant == "keras-mixed":
        keras.config.set_dtype_policy("mixed_bfloat16")
    source = build()
    shape = tuple(source.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    if "int" in str(source.inputs[0].dtype):  # token ids
        x = rng.integers(0, TEXT_VOCABULARY, (batch * steps, *shape)).astype(np.int32)
    else:
        x = rng.random((batch * steps, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch * steps)
    loss = "sparse_categorical_crossentropy"
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    if variant == "paper":  # tf.cast the weights, set_floatx, rebuild the architecture, load
        weights = source.get_weights()
        keras.config.set_floatx("bfloat16")
        keras.config.set_dtype_policy("bfloat16")  # Keras 3 caches the policy made from floatx at first use
        model = build()
        model.set_weights([w.astype(fp16cont.numerics.numpy_dtype("bfloat16")) for w in weights])
    elif variant.startswith("fp16cont"):
        model = fp16cont.build_fp16_model(source, precision="auto", verify=False)
    else:
        model = source
    baseline = start_peak_memory()
    engine = "n/a"
    if variant in ("fp16cont", "fp16cont-plain", "fp16cont-spe1", "fp16cont-noguard", "fp16cont-xla", "float32-ct"):
        if variant == "fp16cont-xla":
            model.compile(make_optimizer(optimizer), loss, jit_compile=True)
        result = fp16cont.continue_training(
            model, x, y, epochs=epochs, batch_size=batch, loss=None if variant == "fp16cont-xla" else loss, verbose=0,
            optimizer=None if variant == "fp16cont-xla" else make_optimizer(optimizer),
            nan_guard=variant != "fp16cont-noguard", compensation=None if variant == "fp16cont-plain" else "auto",
            callbacks=[Timer()], engine=Engine(steps_per_execution=1) if variant == "fp16cont-spe1" else "auto",
        )
        optimizer_bytes = result.optimizer_bytes
        engine = f"{result.engine}: {result.engine_reason}"
    elif variant == "fp16cont-by-hand-sr":
        from fp16cont.optim.compensation import CompensatedOptimizer

        model.compile(CompensatedOptimizer(make_optimizer(optimizer), "stochastic"), loss)
        model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=[Timer()])
        optimizer_bytes = weight_bytes(model.optimizer.variables)
    else:
        model.compile(make_optimizer(optimizer), loss)
        model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=[Timer()])
        optimizer_bytes = weight_bytes(model.optimizer.variables)
    peak = peak_memory_growth(baseline)
    steady = times[1:] or times
    return {
        "images_per_s": batch * steps / statistics.median(steady),
        "weight_bytes": weight_bytes(model.weights),
        "optimizer_bytes": optimizer_bytes,
        "peak_bytes": peak.bytes,
        "memory_method": peak.method,
        "precision": fp16cont.convert.rebuild.float_precision(model),
        "engine": engine,
        "epoch_seconds": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "resnet56", "mlp", "text_lstm"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS),
                        help="sgd: SGD 0.01 (default); adam, rmsprop: learning rate 1e-3")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process (the first is excluded)")
    parser.add_argument("--json", type=Path, help="write the raw measurements here")
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"),
                        help="Keras backend of the child processes (on its CPU)")
    parser.add_argument("--cpus", default=None, help="pin each child process to these cores (taskset -c LIST)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.batch, args.steps, args.epochs, args.optimizer)))
        return
    os.environ["KERAS_BACKEND"] = args.backend  # the table below imports fp16cont (and so Keras) here too
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:  # alternate the variants within each repeat
            cmd = [sys.executable, __file__, "--child", args.model, variant, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--epochs", str(args.epochs), "--optimizer", args.optimizer]
            if args.cpus:
                cmd = ["taskset", "-c", args.cpus, *cmd]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   "KERAS_BACKEND": args.backend, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats} {variant}: {runs[variant][-1]['images_per_s']:.0f} img/s",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    print()
    print(f"backend {args.backend}, cores {args.cpus or 'all'}; engines: " + "; ".join(
        f"{v}: {rs[0]['engine']}" for v, rs in runs.items() if rs[0]["engine"] != "n/a"))
    print(table(args.model, runs))


def table(model: str, runs: dict[str, list[dict]]) -> str:
    from fp16cont.reporting.tables import render_table

    base = statistics.median(r["images_per_s"] for r in runs.get("float32", runs[next(iter(runs))]))
    base_bytes = (runs.get("float32") or next(iter(runs.values())))[0]
    base_mem = statistics.median(r["peak_bytes"] or 0 for r in runs.get("float32", [])) if "float32" in runs else None
    rows = []
    for variant, rs in runs.items():
        speed = statistics.median(r["images_per_s"] for r in rs)
        state = rs[0]["weight_bytes"] + rs[0]["optimizer_bytes"]
        peak = statistics.median(r["peak_bytes"] or 0 for r in rs)
        rows.append([
            variant, rs[0]["precision"], f"{speed:,.0f}", f"{speed / base:.2f}x",
            f"{min(r['images_per_s'] for r in rs):,.0f}-{max(r['images_per_s'] for r in rs):,.0f}",
            f"{state:,}", f"{state / (base_bytes['weight_bytes'] + base_bytes['optimizer_bytes']):.3f}x",
            f"{peak / 2**20:,.0f} MiB", f"{peak / base_mem:.2f}x" if base_mem else "-",
        ])
    headers = [f"{model} variant", "precision", "img/s (median)", "vs float32", "range", "weight+opt bytes",
               "vs float32", "peak RSS growth", "vs float32"]
    return render_table(headers, rows, markdown=True)


if __name__ == "__main__":
    main()
