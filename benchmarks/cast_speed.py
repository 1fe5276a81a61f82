"""Casting speed: quantize_weights (cast + full audit) against a bare astype.

Run:  python benchmarks/cast_speed.py --gigabytes 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fp16cont
from fp16cont.reporting.tables import render_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0, help="float32 weights to cast")
    parser.add_argument("--tensors", type=int, default=64, help="number of weight tensors")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    count = int(args.gigabytes * 2**30 / 4 / args.tensors)
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal(count, dtype=np.float32) * 0.05) for _ in range(args.tensors)]
    total = sum(w.nbytes for w in weights)
    rows = []
    for precision in ("bfloat16", "float16"):
        dtype = fp16cont.numerics.numpy_dtype(precision)
        bare = min(_time(lambda: [w.astype(dtype) for w in weights]) for _ in range(args.repeats))
        audited = min(_time(lambda: fp16cont.quantize_weights(weights, precision)) for _ in range(args.repeats))
        rows.append([precision, f"{total / 2**30:.2f}", f"{total / bare / 1e9:.2f}", f"{total / audited / 1e9:.2f}",
                     f"{bare / audited:.2f}x"])
    print(render_table(["format", "GiB float32", "astype GB/s", "quantize_weights GB/s", "vs astype"], rows,
                       markdown=True))


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
