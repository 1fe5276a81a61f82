"""Draw a :class:`~fp16cont.reporting.results.ComparisonReport`: accuracy and time curves side by side.

matplotlib is optional (``pip install 'fp16cont[plot]'``) and imported only
here, only when a plot is asked for. The figure is drawn on its own
``matplotlib.figure.Figure``: pyplot, its global state and the user's
backend choice are never touched.

Example:
    >>> plot_comparison(report, "comparison.png")  # doctest: +SKIP
    PosixPath('comparison.png')
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fp16cont.errors import InvalidArgumentError, MissingDependencyError

if TYPE_CHECKING:
    from fp16cont.reporting.results import ComparisonReport, RunRecord

__all__ = ["plot_available", "plot_comparison"]

INSTALL_HINT = "pip install 'fp16cont[plot]' (or pip install matplotlib)"


def plot_available() -> bool:
    """Whether matplotlib can be imported.

    Example:
        >>> isinstance(plot_available(), bool)
        True
    """
    return importlib.util.find_spec("matplotlib") is not None


def plot_comparison(report: ComparisonReport, path: str | os.PathLike[str]) -> Path:
    """Save accuracy per epoch (left) and cumulative wall time per epoch (right).

    The left panel shows validation accuracy (solid, from epoch 0: the
    starting weights) and training accuracy (dashed) of every precision, as
    means over seeds; models without an accuracy metric show the loss
    instead. The right panel shows the cumulative wall seconds of training.

    Args:
        report: The comparison to draw.
        path: The image file; its suffix picks the format (``.png``, ``.svg``, ``.pdf``, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MissingDependencyError: If matplotlib is not installed.
        InvalidArgumentError: If matplotlib cannot write files with that suffix.
    """
    figure_class = _figure_class()
    from matplotlib.ticker import MaxNLocator

    file = Path(path)
    figure = figure_class(figsize=(11, 4.2), constrained_layout=True)
    _check_suffix(file, figure)
    metric_ax, time_ax = figure.subplots(1, 2)
    metric = "accuracy" if any(e.accuracy is not None for r in report.runs for e in r.epochs) else "loss"
    for i, precision in enumerate(report.precisions):
        runs = report.runs_for(precision)
        _draw_runs(metric_ax, time_ax, runs, precision, f"C{i}", metric)
    metric_ax.set(xlabel="epoch", ylabel=metric, title=f"{metric.capitalize()} (solid: validation, dashed: training)")
    time_ax.set(xlabel="epoch", ylabel="cumulative wall seconds", title="Training time")
    for ax in (metric_ax, time_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    figure.suptitle(
        f"{report.model_name}: continued training, {report.train_samples:,} samples, batch "
        f"{report.batch_size}, {report.device} ({report.backend})",
        fontsize="medium",
    )
    figure.savefig(file, dpi=120)
    return file


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError(f"Plotting needs matplotlib, which is not installed. Fix: {INSTALL_HINT}.") from err
    return Figure


def _check_suffix(file: Path, figure: Any) -> None:
    supported = figure.canvas.get_supported_filetypes()
    if file.suffix.lstrip(".").lower() not in supported:
        raise InvalidArgumentError(
            f"Argument `path` should end in an image suffix matplotlib can write "
            f"({', '.join('.' + s for s in sorted(supported))}). Received: path={str(file)!r}. "
            "Fix: e.g. path='comparison.png'."
        )


def _draw_runs(metric_ax: Any, time_ax: Any, runs: tuple[RunRecord, ...], label: str, color: str, metric: str) -> None:
    epochs = np.arange(len(runs[0].epochs) + 1)
    initial = "initial_val_accuracy" if metric == "accuracy" else "initial_val_loss"
    validation = _mean_curve([[getattr(r, initial)] + [getattr(e, f"val_{metric}") for e in r.epochs] for r in runs])
    training = _mean_curve([[None] + [getattr(e, metric) for e in r.epochs] for r in runs])
    if np.isfinite(validation).any():
        metric_ax.plot(epochs, validation, "-o", color=color, label=f"{label} validation")
    if np.isfinite(training).any():
        metric_ax.plot(epochs, training, "--", color=color, alpha=0.7, label=f"{label} training")
    seconds = _mean_curve([[0.0] + list(np.cumsum([e.seconds for e in r.epochs])) for r in runs])
    time_ax.plot(epochs, seconds, "-o", color=color, label=label)


def _mean_curve(curves: list[list[Any]]) -> np.ndarray:
    """Mean over runs, point by point; ``NaN`` where no run has a value."""
    values = np.array([[np.nan if v is None else float(v) for v in c] for c in curves], dtype=np.float64)
    counts = np.isfinite(values).sum(axis=0)
    sums = np.where(np.isfinite(values), values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
