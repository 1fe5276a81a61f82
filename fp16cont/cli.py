"""Command line: ``python -m fp16cont demo``, ``audit MODEL`` and ``compare MODEL --data ...``.

TensorFlow's C++ startup log is hidden (see :mod:`fp16cont._quiet`) and
Python warnings print as one ``note:`` line each, unless ``--verbose`` is
given.

Example:
    >>> main(["audit", "--help"])  # doctest: +SKIP
    >>> main(["compare", "model.keras", "--data", "mnist.npz", "--epochs", "2", "--out", "results"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fp16cont.errors import Fp16ContError, InvalidArgumentError

if TYPE_CHECKING:
    from fp16cont.reporting.results import ComparisonReport

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
    with warnings.catch_warnings():
        if not args.verbose:
            _quiet_python_logs()
        try:
            return int(args.run(args))
        except Fp16ContError as err:
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            return 2


def _quiet_python_logs() -> None:
    """One short line per Python warning; TensorFlow's Python logger only for errors."""

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        print(f"note: {category.__name__}: {message}", file=sys.stderr)

    warnings.showwarning = show  # restored by the enclosing catch_warnings()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


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
    demo.add_argument("--verbose", action="store_true", help=_VERBOSE)
    demo.set_defaults(run=_run_demo)
    audit = sub.add_parser("audit", help="print what casting a saved model to 16-bit would do")
    audit.add_argument("model", help="a .keras or .h5 model file")
    audit.add_argument("--precision", default="auto", choices=("auto", "float16", "bfloat16"))
    audit.add_argument("--on-overflow", default="saturate", choices=("raise", "saturate", "keep_float32"))
    audit.add_argument("--markdown", action="store_true")
    audit.add_argument("--verbose", action="store_true", help=_VERBOSE)
    audit.set_defaults(run=_run_audit)
    compare = sub.add_parser(
        "compare", help="continue training a saved float32 model in several precisions, side by side"
    )
    compare.add_argument("model", help="a .keras or .h5 model file (float32)")
    compare.add_argument("--data", required=True,
                         help="digits (embedded, no network), a .npz file (keras.datasets layout), or "
                         "mnist / cifar10 (downloaded through keras.datasets the first time)")
    compare.add_argument("--epochs", type=int, default=1)
    compare.add_argument("--precisions", type=_names, default=("float32", "auto"),
                         help="comma-separated: float32, auto, float16, bfloat16, mixed_float16, mixed_bfloat16")
    compare.add_argument("--batch-size", type=int, default=128)
    compare.add_argument("--limit", type=int, default=None, help="use the first N training and N test samples")
    compare.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated seeds, one run per seed and precision")
    compare.add_argument("--loss", default=None,
                         help="loss for an uncompiled model (default: the model's, else sparse_categorical_crossentropy)")
    compare.add_argument("--optimizer", default=None, help="optimizer name (default: the model's, else SGD(0.01))")
    compare.add_argument("--out", type=Path, default=None, help="directory for comparison.md, comparison.json, comparison.png")
    compare.add_argument("--no-warmup", dest="warmup", action="store_false",
                         help="skip the unmeasured one-batch warm-up of each precision")
    compare.add_argument("--progress", default="auto", choices=("auto", "0", "1", "2"),
                         help="Keras' progress bar (0: no progress lines at all)")
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table")
    compare.add_argument("--verbose", action="store_true", help=_VERBOSE)
    compare.set_defaults(run=_run_compare)
    return parser


_VERBOSE = "also show TensorFlow's startup log and Python warnings in full"


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"seeds should be comma-separated integers, e.g. 0,1,2 ({err})") from err


def _run_demo(args: argparse.Namespace) -> int:
    from fp16cont.bench.demo import demo_notes, run_demo
    from fp16cont.hardware import detect_device, select_precision

    device = detect_device()
    choice = select_precision(args.precision, device, warn=False)
    print(f"fp16cont demo on {device.name} ({device.kind}), embedded 8x8 digits (1,797 real images); "
          f"16-bit format: {choice.reason}", flush=True)
    report = run_demo(args.pretrain_epochs, args.epochs, args.precision, args.batch_size, args.seed)
    print(report.table(args.markdown))
    print(demo_notes(report, choice.fast))
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from fp16cont.convert.quantize import quantize_weights

    q = quantize_weights(args.model, args.precision, on_overflow=args.on_overflow)
    print(q.report.summary(args.markdown))
    return 0 if q.report.ok else 1


def _run_compare(args: argparse.Namespace) -> int:
    from fp16cont.reporting.compare import compare
    from fp16cont.bench.datasets import load_dataset
    from fp16cont.convert.architecture import compile_config
    from fp16cont.convert.sources import load_model

    if args.out is not None:
        _make_dir(args.out)
    (x, y), (xt, yt) = load_dataset(args.data, limit=args.limit)
    model = load_model(args.model)
    loss = args.loss or (None if compile_config(model).get("loss") else "sparse_categorical_crossentropy")
    print(f"fp16cont compare: {model.name} on {args.data}: {len(x):,} training and {len(xt):,} validation samples")
    report = compare(
        model,
        (x, y),
        (xt, yt),
        precisions=args.precisions,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=args.seeds,
        optimizer=args.optimizer,
        loss=loss,
        warmup=args.warmup,
        measure_memory=True,  # this process is the command's own: resetting its memory counters is fine
        verbose=args.progress if args.progress == "auto" else int(args.progress),
    )
    print(report.table(args.markdown))
    print(report.legend())
    if args.out is not None:
        _write_outputs(report, args.out)
    return 0


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidArgumentError(
            f"Argument `--out` should be a directory that can be created. Received: --out {str(out)!r} "
            f"({type(err).__name__}: {err}). Fix: pass a new or existing directory, e.g. --out results."
        ) from err


def _write_outputs(report: ComparisonReport, out: Path) -> None:
    from fp16cont.reporting.plotting import INSTALL_HINT, plot_available

    (out / "comparison.md").write_text(
        f"# {report.model_name}: continued training by precision\n\n{report.table(markdown=True)}\n\n"
        f"Per epoch:\n\n{report.table(markdown=True, per_epoch=True)}\n\n"
        f"{report.legend()}\n"
    )
    (out / "comparison.json").write_text(report.to_json() + "\n")
    written = ["comparison.md", "comparison.json"]
    can_plot = plot_available()
    if can_plot:
        report.plot(out / "comparison.png")
        written.append("comparison.png")
    print(f"wrote {', '.join(written)} to {out}")
    if not can_plot:
        print(f"no plot: matplotlib is not installed ({INSTALL_HINT})")
