"""Command line: ``python -m fp16cont demo`` and ``python -m fp16cont audit MODEL``.

Example:
    >>> main(["audit", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fp16cont.errors import Fp16ContError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` by default).

    Returns:
        The exit status: 0 on success, 2 for an fp16cont error.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except Fp16ContError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fp16cont", description="Continue training float32 Keras models in 16-bit.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="train on the embedded digits set in float32 and 16-bit, side by side")
    demo.add_argument("--pretrain-epochs", type=int, default=3)
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--precision", default="auto", choices=("auto", "float16", "bfloat16"))
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--markdown", action="store_true", help="print a Markdown table")
    demo.set_defaults(run=_run_demo)
    audit = sub.add_parser("audit", help="print what casting a saved model to 16-bit would do")
    audit.add_argument("model", help="a .keras or .h5 model file")
    audit.add_argument("--precision", default="auto", choices=("auto", "float16", "bfloat16"))
    audit.add_argument("--on-overflow", default="saturate", choices=("raise", "saturate", "keep_float32"))
    audit.add_argument("--markdown", action="store_true")
    audit.set_defaults(run=_run_audit)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from fp16cont.demo import render_demo, run_demo
    from fp16cont.hardware import detect_device

    device = detect_device()
    print(f"fp16cont demo on {device.name} ({device.kind}), embedded 8x8 digits (1,797 real images)")
    rows = run_demo(args.pretrain_epochs, args.epochs, args.precision, args.batch_size, args.seed)
    print(render_demo(rows, args.markdown))
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from fp16cont.quantize import quantize_weights

    q = quantize_weights(args.model, args.precision, on_overflow=args.on_overflow)
    print(q.report.summary(args.markdown))
    return 0 if q.report.ok else 1
