"""The main job: continue training a float32 model in float32 and in 16-bit.

Uses the 8x8 handwritten digits shipped inside the package (real data, no
network). A float32 MLP is trained briefly, then :func:`fp16cont.compare`
continues copies of it in float32 and in 16-bit from the same weights and
data order, and its table compares them.

Example:
    >>> report = run_demo(pretrain_epochs=1, epochs=1, verbose=0)  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import keras

from fp16cont.bench.datasets import load_digits
from fp16cont.errors import check_int
from fp16cont.reporting.compare import compare, resolve_precisions, seeded
from fp16cont.reporting.results import ComparisonReport

__all__ = ["load_digits", "digits_model", "run_demo", "demo_notes"]


def digits_model(width: int = 1024) -> keras.Model:
    """A Dense-heavy float32 classifier for the 64-pixel digits.

    Args:
        width: Units of each hidden layer.

    Returns:
        An uncompiled, built model.

    Example:
        >>> digits_model(8).count_params()
        714
    """
    return keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="classes"),
        ],
        name="digits_mlp",
    )


def run_demo(
    pretrain_epochs: int = 3,
    epochs: int = 8,
    precision: str = "auto",
    batch_size: int = 128,
    seed: int = 0,
    verbose: int | str = "auto",
    width: int = 1024,
) -> ComparisonReport:
    """Train in float32, then continue in float32 and in 16-bit side by side.

    Args:
        pretrain_epochs: Float32 epochs (Adam 1e-3) that make the "pre-trained" model.
        epochs: Epochs of continued training (SGD 0.01) for each precision.
        precision: The 16-bit format (``"auto"`` picks it for this hardware).
        batch_size: Batch size (128, as in Continuous 16-bit Training).
        seed: Seed for weights and data order (Python's and NumPy's global
            generators are restored afterwards).
        verbose: Keras progress bar setting; unless 0, labelled progress lines too.
        width: Units of each hidden layer of :func:`digits_model`.

    Returns:
        The :class:`~fp16cont.reporting.results.ComparisonReport` of the two runs.

    Example:
        >>> report = run_demo(1, 1, verbose=0)  # doctest: +SKIP
        >>> report.precisions  # doctest: +SKIP
        ('float32', 'bfloat16')
    """
    _check_demo_args(pretrain_epochs, epochs, precision, batch_size, seed, width)
    (x, y), (xt, yt) = load_digits(seed=seed)
    with seeded(seed):
        source = digits_model(width)
        source.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        if verbose not in (0, False):
            print(f"[pre-training] float32 model, Adam(1e-3), {pretrain_epochs} epoch(s) on {len(x):,} samples", flush=True)
        source.fit(x, y, epochs=pretrain_epochs, batch_size=batch_size, verbose=verbose)
    return compare(
        source,
        (x, y),
        (xt, yt),
        precisions=("float32", precision),
        epochs=epochs,
        batch_size=batch_size,
        seeds=(seed,),
        optimizer="sgd",
        warmup=False,
        verbose=verbose,
    )


def _check_demo_args(pretrain_epochs: Any, epochs: Any, precision: Any, batch_size: Any, seed: Any, width: Any) -> None:
    """Every argument checked before the first epoch, with the typed error of the call that would meet it later."""
    check_int("pretrain_epochs", pretrain_epochs, example=3)
    check_int("epochs", epochs, example=8)
    check_int("batch_size", batch_size, example=128)
    check_int("seed", seed, example=0, minimum=0)
    check_int("width", width, example=1024)
    resolve_precisions(("float32", precision))


def demo_notes(report: ComparisonReport, fast_16bit: bool | None = None) -> str:
    """Lines under the demo table: the report's legend, and why 16-bit is not faster when it is not.

    Args:
        report: The result of :func:`run_demo` (float32 first).
        fast_16bit: Whether this device has fast 16-bit arithmetic
            (:attr:`fp16cont.PrecisionChoice.fast`); ``None`` if unknown.

    Returns:
        The lines, without a trailing newline.

    Example:
        >>> print(demo_notes(report, fast_16bit=True))  # doctest: +SKIP
    """
    reference, *others = (report.runs_for(p)[0] for p in report.precisions)
    lines = [report.legend()]
    for run in others:
        if run.steady_samples_per_second > 1.05 * reference.steady_samples_per_second:
            continue
        if fast_16bit is False:
            why = "this processor has no fast 16-bit arithmetic, so 16-bit matrix products run emulated"
        else:
            why = (f"the extra work of fp16cont's compensated ({run.compensation or 'plain'}) update offsets the "
                   "faster 16-bit matrix products of this small model; see benchmarks/RESULTS.md for larger models")
        lines.append(f"{run.precision} is not faster than float32 here: {why}.")
    return "\n".join(lines)
