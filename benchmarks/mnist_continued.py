"""Continued training on real MNIST: float32 vs plain 16-bit vs fp16cont vs Keras mixed.

A small CNN is trained briefly in float32 (SGD 0.01, momentum 0.9), then
training continues from the same weights and data order, with each optimizer
(``--optimizers``: SGD with momentum, Adam) and learning rate (``--lrs``), as
  (a) float32                          (``--variants float32``),
  (b) the paper's plain pure 16-bit recipe: every layer 16-bit, Keras'
      optimizer as is, no compensation (``plain``),
  (c) fp16cont pure 16-bit with Kahan-compensated updates (``kahan``),
  (d) Keras mixed precision: float32 variables, 16-bit compute (``mixed``),
  (e) fp16cont pure 16-bit with stochastic rounding (``stochastic``),
(f) float32 started from the 16-bit-rounded weights (``float32-from16``: is the
    starting point enough to move the result?), (g) stochastic rounding with
    float32 optimizer slots (``stochastic-f32slots``),
for several seeds, and a table per optimizer and learning rate prints test
accuracy (mean ± spread over seeds), its difference to (a), weight +
optimizer bytes and the share of updates rounding cancelled (unless
``--no-stagnation``).

``--recalibrate-bn STEPS`` also re-estimates every BatchNormalization layer's
moving statistics after training (``fp16cont.recalibrate_batchnorm``, "precise
BatchNorm") over STEPS batches of 128 training images (a random subset, the
same for every variant of a seed), evaluates again, and prints two more tables:
every variant recalibrated, and only the 16-bit variants recalibrated (float32
as trained).

Run:  python benchmarks/mnist_continued.py --data ../shared/data/mnist.npz
      python benchmarks/mnist_continued.py --optimizers sgd adam --lrs 0.01 0.001 \
          --variants float32 stochastic kahan --no-stagnation
      python benchmarks/mnist_continued.py --pretrain-epochs 2 --epochs 1 --lrs 0.01 \
          --variants float32 stochastic --no-stagnation --recalibrate-bn 100
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from fp16cont.convert.architecture import clone_with_policies  # noqa: E402
from fp16cont.reporting.stagnation import stagnation_audit  # noqa: E402
from fp16cont.reporting.tables import render_table  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"


def load(path: Path, train: int, test: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as d:
        x, y, xt, yt = d["x_train"][:train], d["y_train"][:train], d["x_test"][:test], d["y_test"][:test]
    scale = lambda a: (a.astype("float32") / 255.0)[..., None]  # noqa: E731
    return (scale(x), y.astype("int32")), (scale(xt), yt.astype("int32"))


def cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="mnist_cnn",
    )


VARIANTS = ("float32", "plain", "kahan", "mixed", "stochastic", "float32-from16", "stochastic-f32slots")


def variants(precision: str, names: tuple[str, ...] = VARIANTS) -> list[tuple[str, dict, dict]]:
    rows = {
        "float32": ("(a) float32", {"float32": True}, {"compensation": None}),
        "plain": (f"(b) plain pure {precision} (paper)", {"precision": precision, "keep_float32": None},
                  {"compensation": None, "loss_scaling": False}),
        "kahan": (f"(c) fp16cont pure {precision} + Kahan", {"precision": precision}, {"compensation": "kahan"}),
        "mixed": (f"(d) Keras mixed_{precision}", {"precision": precision, "mode": "mixed"}, {"compensation": None}),
        "stochastic": (f"(e) fp16cont pure {precision} + stochastic", {"precision": precision},
                       {"compensation": "stochastic"}),
        # controls for where a 16-bit loss comes from:
        "float32-from16": (f"(f) float32 from the {precision}-rounded weights", {"float32": True, "from": precision},
                           {"compensation": None}),
        "stochastic-f32slots": (f"(g) fp16cont pure {precision} + stochastic, float32 momentum", {"precision": precision},
                                {"compensation": "stochastic", "slot_dtype": "float32"}),
    }
    return [rows[name] for name in names]


def make_optimizer(name: str, lr: float, momentum: float) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(lr) if name == "adam" else keras.optimizers.SGD(lr, momentum=momentum)


def build(source: keras.Model, build_kwargs: dict) -> keras.Model:
    if build_kwargs.get("float32"):
        model = clone_with_policies(source, lambda layer: None)
        if build_kwargs.get("from"):  # the 16-bit model's starting point, in float32
            rounded = fp16cont.build_fp16_model(source, precision=build_kwargs["from"], verify=False)
            model.set_weights([np.asarray(w, np.float32) for w in rounded.get_weights()])
        else:
            model.set_weights(source.get_weights())
        return model
    return fp16cont.build_fp16_model(source, verify=False, **build_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST .npz in keras layout")
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--test-samples", type=int, default=10000)
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01])
    parser.add_argument("--optimizers", nargs="+", default=["sgd"], choices=("sgd", "adam"))
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precision", default="auto", choices=("auto", "float16", "bfloat16"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-stagnation", action="store_true", help="do not count cancelled updates (faster)")
    parser.add_argument("--recalibrate-bn", type=int, default=0, metavar="STEPS",
                        help="also re-estimate BatchNormalization statistics over STEPS batches after training")
    args = parser.parse_args()

    precision = fp16cont.select_precision(args.precision).precision
    (x, y), (xt, yt) = load(args.data, args.train_samples, args.test_samples)
    print(f"MNIST {len(x)} train / {len(xt)} test, 16-bit format {precision}, device {fp16cont.detect_device().name}")
    settings = [(opt, lr) for opt in args.optimizers for lr in args.lrs]
    results: dict[tuple[str, float], dict[str, list[tuple[float, int, float | None, float]]]] = {s: {} for s in settings}
    recalibrated: dict[tuple[str, float], dict[str, list[tuple[float, int, float | None, float]]]] = {s: {} for s in settings}
    is16: dict[str, bool] = {}
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        source = cnn()
        source.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
        source.fit(x, y, epochs=args.pretrain_epochs, batch_size=128, verbose=0)
        start_acc = source.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
        print(f"seed {seed}: float32 start accuracy {start_acc:.4f}", flush=True)
        subset = np.random.default_rng(seed).permutation(len(x))[: args.recalibrate_bn * 128]
        for opt_name, lr in settings:
            for label, build_kwargs, train_kwargs in variants(precision, tuple(args.variants)):
                model = build(source, build_kwargs)
                keras.utils.set_random_seed(seed)
                t0 = time.perf_counter()
                track = train_kwargs.get("compensation") is not None and not args.no_stagnation
                result = fp16cont.continue_training(
                    model, x, y, epochs=args.epochs, batch_size=128, shuffle=True,
                    optimizer=make_optimizer(opt_name, lr, args.momentum), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"], stagnation=track, verbose=0, **train_kwargs,
                )
                wall = time.perf_counter() - t0
                acc = model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
                stagnation = None if args.no_stagnation else _stagnation(model, x, y, result, train_kwargs, args, opt_name, lr)
                nbytes = result.weight_bytes + result.optimizer_bytes
                results[(opt_name, lr)].setdefault(label, []).append((acc, nbytes, stagnation, wall))
                is16[label] = result.precision != "float32"
                line = f"  {opt_name} lr={lr:g} {label}: accuracy {acc:.4f}, {wall:.1f} s"
                if args.recalibrate_bn:
                    t0 = time.perf_counter()
                    recal = fp16cont.recalibrate_batchnorm(model, x[subset], batch_size=128)
                    seconds = time.perf_counter() - t0
                    acc_bn = model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
                    recalibrated[(opt_name, lr)].setdefault(label, []).append((acc_bn, nbytes, stagnation, wall))
                    line += f"; BatchNorm recalibrated: accuracy {acc_bn:.4f} ({recal.summary()}, {seconds:.1f} s)"
                print(line, flush=True)
    for (opt_name, lr), rows in results.items():
        print(f"\n{opt_name} lr={lr:g}")
        print(table(rows))
        if args.recalibrate_bn:
            print(f"\n{opt_name} lr={lr:g}, every variant's BatchNorm statistics recalibrated ({args.recalibrate_bn} batches)")
            print(table(recalibrated[(opt_name, lr)]))
            only16 = {label: recalibrated[(opt_name, lr)][label] if is16[label] else runs for label, runs in rows.items()}
            print(f"\n{opt_name} lr={lr:g}, only the 16-bit variants recalibrated (float32 as trained)")
            print(table(only16))


def _stagnation(model, x, y, result, train_kwargs, args, opt_name, lr) -> float | None:  # type: ignore[no-untyped-def]
    if result.precision not in ("float16", "bfloat16"):
        return None
    if train_kwargs.get("compensation") is None:  # plain: what round-to-nearest cancels on the next step
        return stagnation_audit(model, x, y, optimizer=make_optimizer(opt_name, lr, args.momentum),
                                loss="sparse_categorical_crossentropy", compensation="none").lost_share
    return result.stagnation.lost_share if result.stagnation else None


def table(results: dict[str, list[tuple[float, int, float | None, float]]]) -> str:
    base_acc = float(np.mean([r[0] for r in next(iter(results.values()))]))
    base_bytes = next(iter(results.values()))[0][1]
    rows = []
    for label, runs in results.items():
        accs = np.array([r[0] for r in runs]) * 100
        stag = [r[2] for r in runs if r[2] is not None]
        rows.append([
            label,
            f"{accs.mean():.2f} ± {(accs.max() - accs.min()) / 2:.2f}",
            f"{accs.mean() - base_acc * 100:+.2f}",
            f"{runs[0][1]:,}",
            f"{runs[0][1] / base_bytes:.3f}x",
            "-" if not stag else f"{np.mean(stag):.1%}",
            f"{np.mean([r[3] for r in runs]):.1f}",
        ])
    headers = ["variant", "test acc % (mean ± half-range)", "vs (a) pp", "weight+opt bytes", "vs (a)",
               "updates lost", "train s"]
    return render_table(headers, rows, markdown=True)


if __name__ == "__main__":
    main()
