"""The paper's experiment on real data: a ResNet-20-style model trained in float32
on MNIST, then continued in float32 and in fp16cont 16-bit, side by side.

Prints the comparison table (final test accuracy, wall time, samples/s,
bytes) and the accuracy gap and wall-time ratio of 16-bit to float32.

Run:  python benchmarks/mnist_resnet_accuracy.py --data ../shared/data/mnist.npz --train-samples 10000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import fp16cont  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="mnist, cifar10 or a keras-layout .npz")
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    (x, y), (xt, yt) = fp16cont.load_dataset(args.data)
    x, y = x[: args.train_samples], y[: args.train_samples]
    keras.utils.set_random_seed(0)
    model = fp16cont.resnet(args.depth, input_shape=x.shape[1:], num_classes=10)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=args.pretrain_epochs, batch_size=128, verbose=2)
    report = fp16cont.compare(
        model, (x, y), (xt, yt), precisions=("float32", "auto"), epochs=args.epochs, batch_size=128,
        seeds=tuple(args.seeds), optimizer=keras.optimizers.SGD(0.01), verbose=2,
    )
    print(report.table(markdown=True))
    runs = {r.precision: r for r in report.runs}
    low = next(p for p in runs if p != "float32")
    acc32 = runs["float32"].epochs[-1].val_accuracy
    acc16 = runs[low].epochs[-1].val_accuracy
    t32 = sum(e.seconds for e in runs["float32"].epochs)
    t16 = sum(e.seconds for e in runs[low].epochs)
    print(f"\nfinal test accuracy: float32 {acc32:.4f}, {low} {acc16:.4f} ({(acc16 - acc32) * 100:+.2f} pp); "
          f"wall time {low}/float32 = {t16 / t32:.2f}")


if __name__ == "__main__":
    main()
