"""Cross-device reductions in one ``continue_training`` step under ``keras.distribution.DataParallel``.

Compiles the engine's step for a model on 2 CPU host devices (XLA's host
platform, so no GPU is needed), reads XLA's optimised program and counts its
``all-reduce`` operations by what they reduce: BatchNorm statistics (the
forward mean and variance, and their gradients in the backward pass), or the
gradients of the weights. Each all-reduce is a synchronisation of all devices
that the next layer waits for, so on GPUs their number, more than their bytes,
is a fixed cost per step.

Run (CPU, about a minute):
    python benchmarks/collectives.py --model resnet20
    python benchmarks/collectives.py --model resnet20 --batch-statistics replica
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

DUMP = tempfile.mkdtemp(prefix="fp16cont-hlo-")
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count=2 --xla_dump_to={DUMP} "
                           "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*steps.*")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from fp16cont.bench import models  # noqa: E402
from fp16cont.training.engine import Engine  # noqa: E402


def origin(line: str, bn_layers: set[str]) -> str:
    """What one all-reduce line of the optimised HLO reduces, from its source metadata."""
    names = set(re.findall(r"jvp\((\w+)\)", line))
    if names and names <= bn_layers:
        return "BatchNorm statistics" + (" (backward)" if "transpose(jvp(" in line else " (forward)")
    if names & bn_layers:
        return "BatchNorm and weight gradients, combined"
    return "weight gradients"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet20", "resnet32", "mlp"), default="resnet20")
    parser.add_argument("--batch-statistics", choices=("global", "replica"), default="global",
                        help="Engine(batch_statistics=...): the global batch's BatchNorm statistics or each device's")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    source = getattr(models, args.model)() if args.model != "mlp" else models.mlp((32, 32, 3))
    source.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    model16 = fp16cont.build_fp16_model(source, precision="float16")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    x = np.random.default_rng(0).random((256, 32, 32, 3), dtype=np.float32)
    fp16cont.continue_training(model16, x, np.zeros(256, np.int32), epochs=1, batch_size=128, verbose=0,
                               engine=Engine("resident", steps_per_execution=2, batch_statistics=args.batch_statistics))
    text = open(sorted(glob.glob(f"{DUMP}/*steps*after_optimizations.txt"))[-1]).read()
    bn_layers = {layer.name for layer in model16.layers if isinstance(layer, keras.layers.BatchNormalization)}
    counts = collections.Counter(origin(line, bn_layers) for line in text.splitlines() if " all-reduce(" in line)
    print(f"{args.model}: {len(bn_layers)} BatchNorm layers, {len(model16.trainable_variables)} trainable variables, "
          f"DataParallel over {len(jax.devices())} host devices, batch_statistics={args.batch_statistics!r}")
    print("| all-reduces per step | count |\n| --- | --- |")
    for what, count in counts.most_common():
        print(f"| {what} | {count} |")
    print(f"| total | {sum(counts.values())} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
