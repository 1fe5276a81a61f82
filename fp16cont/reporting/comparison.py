"""The frozen report of :func:`fp16cont.compare`: records, table, JSON and plot.

Example:
    >>> epoch = EpochRecord(1, loss=0.5, accuracy=0.9, val_loss=0.6, val_accuracy=0.88,
    ...                     seconds=2.0, samples_per_second=500.0)
    >>> run = RunRecord("float32", "float32", 0, (epoch,), 0.7, 0.8, 1024, 0, None, None)
    >>> report = ComparisonReport("m", "tensorflow", "CPU", 1000, 200, 128, "rss", (run,))
    >>> report.precisions
    ('float32',)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fp16cont.errors import InvalidArgumentError
from fp16cont.reporting.tables import format_bytes, render_table

__all__ = ["EpochRecord", "RunRecord", "ComparisonReport"]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of one run.

    Attributes:
        epoch: The epoch number, from 1.
        loss: Mean training loss of the epoch.
        accuracy: Training accuracy (``None`` without an accuracy metric).
        val_loss: Validation loss at the end of the epoch (``None`` without
            validation data).
        val_accuracy: Validation accuracy at the end of the epoch.
        seconds: Wall time of the epoch, validation included (the first
            epoch also traces and compiles the training step).
        samples_per_second: Training samples per second of wall time.
    """

    epoch: int
    loss: float
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    samples_per_second: float


@dataclass(frozen=True)
class RunRecord:
    """Continued training of one copy of the model in one precision with one seed.

    Attributes:
        precision: What was trained: ``"float32"``, ``"float16"``,
            ``"bfloat16"`` (pure 16-bit, fp16cont) or ``"mixed_float16"`` /
            ``"mixed_bfloat16"`` (Keras mixed precision).
        requested: The name as asked for (``"auto"`` for a resolved choice).
        seed: The random seed of weights-independent randomness and data order.
        epochs: One :class:`EpochRecord` per epoch.
        initial_val_loss: Validation loss of the starting weights in this
            precision, before any training (``None`` without validation data).
        initial_val_accuracy: Validation accuracy of the starting weights.
        weight_bytes: Bytes of the model's variables.
        optimizer_bytes: Bytes of the optimizer's variables after training.
        peak_memory_bytes: Peak memory growth during training (see
            :attr:`ComparisonReport.memory_measure`), ``None`` if unmeasured.
        loss_scale: The final dynamic loss scale, when loss scaling was used.
        compensation: The compensated-update mode of the optimizer (``"kahan"``,
            ``"stochastic"``), ``None`` for none.
        skipped_steps: Steps the loss scaling skipped for non-finite gradients.
        rollbacks: Times the NaN guard restored the last good state.
    """

    precision: str
    requested: str
    seed: int
    epochs: tuple[EpochRecord, ...]
    initial_val_loss: float | None
    initial_val_accuracy: float | None
    weight_bytes: int
    optimizer_bytes: int
    peak_memory_bytes: int | None
    loss_scale: float | None
    compensation: str | None = None
    skipped_steps: int = 0
    rollbacks: int = 0

    @property
    def wall_seconds(self) -> float:
        """Wall time of all epochs."""
        return float(sum(e.seconds for e in self.epochs))

    @property
    def steady_samples_per_second(self) -> float:
        """Mean samples/s of the epochs after the first (the first, alone, if only one)."""
        rates = [e.samples_per_second for e in self.epochs]
        return float(np.mean(rates[1:] or rates))

    @property
    def final(self) -> EpochRecord:
        """The last epoch."""
        return self.epochs[-1]


@dataclass(frozen=True)
class ComparisonReport:
    """Copies of one float32 model trained on in several precisions, side by side.

    Attributes:
        model_name: Name of the source model.
        backend: The Keras backend (``"tensorflow"``, ``"jax"``).
        device: The device trained on.
        train_samples: Training samples per epoch.
        validation_samples: Validation samples (0 without validation data).
        batch_size: Batch size of every run.
        memory_measure: What :attr:`RunRecord.peak_memory_bytes` measures.
        runs: One :class:`RunRecord` per precision and seed, in the order run.
    """

    model_name: str
    backend: str
    device: str
    train_samples: int
    validation_samples: int
    batch_size: int
    memory_measure: str
    runs: tuple[RunRecord, ...]

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions compared, in the order first run."""
        return tuple(dict.fromkeys(r.precision for r in self.runs))

    def runs_for(self, precision: str) -> tuple[RunRecord, ...]:
        """The runs of one precision (one per seed).

        Args:
            precision: One of :attr:`precisions`.

        Returns:
            The runs, in seed order as run.

        Raises:
            InvalidArgumentError: If nothing ran in ``precision``.

        Example:
            >>> report.runs_for("float32")[0].seed  # doctest: +SKIP
            0
        """
        runs = tuple(r for r in self.runs if r.precision == precision)
        if not runs:
            raise InvalidArgumentError(
                f"Argument `precision` names no run of this report. Received: precision={precision!r}. "
                f"Fix: pass one of {', '.join(map(repr, self.precisions))}."
            )
        return runs

    def table(self, markdown: bool = False, per_epoch: bool = False) -> str:
        """A summary table with one row per precision (means over seeds), or one row per epoch.

        Args:
            markdown: Emit a Markdown table.
            per_epoch: One row per precision, seed and epoch instead of the summary.

        Returns:
            The table, without a trailing newline.

        Example:
            >>> print(report.table())  # doctest: +SKIP
        """
        if per_epoch:
            return render_table(_EPOCH_HEADERS, [_epoch_row(r, e) for r in self.runs for e in r.epochs], markdown)
        headers = [*_SUMMARY_HEADERS[:-2], self.memory_column, _SUMMARY_HEADERS[-1]]
        return render_table(headers, [self._summary_row(p) for p in self.precisions], markdown)

    @property
    def memory_column(self) -> str:
        """The title of the measured-memory column: ``"RSS growth"`` (host), ``"GPU peak"`` or ``"peak memory"``."""
        method = self.memory_measure.split(":", 1)[0]
        return {"rss": "RSS growth", "rss-reset": "RSS growth", "tensorflow-gpu": "GPU peak", "jax-gpu": "GPU peak"}.get(
            method, "peak memory"
        )

    def legend(self) -> str:
        """What each precision trains in and what each memory column measures, one line each.

        Returns:
            The lines, without a trailing newline. When a 16-bit run's host
            RSS growth exceeds float32's, a line says why that is no
            contradiction of its smaller weight and optimizer bytes.

        Example:
            >>> print(report.legend())  # doctest: +SKIP
        """
        lines = [f"{_display(p)}: " + (_MIXED if p.startswith("mixed_") else _TRAINS_IN.get(p, "")).replace(
            "{p}", p.removeprefix("mixed_")) for p in self.precisions]
        compensated = any(r.compensation == "kahan" for r in self.runs)
        lines.append("weight bytes / optimizer bytes: the bytes of the model's and the optimizer's variables "
                     "after training; 16-bit storage halves them"
                     + ("; a kahan run's optimizer bytes also hold its 16-bit compensation buffer." if compensated
                        else "."))
        lines.append(f"{self.memory_column}: {self.memory_measure}.")
        float32 = [r.peak_memory_bytes for r in self.runs if r.precision == "float32" and r.peak_memory_bytes]
        low = [r.peak_memory_bytes for r in self.runs if r.precision != "float32" and r.peak_memory_bytes]
        if self.memory_column == "RSS growth" and float32 and low and max(low) > max(float32):
            lines.append(
                "Why 16-bit RSS growth can exceed float32's while its bytes are smaller: RSS growth counts every "
                "new host allocation of the process during the run, including one-time costs that only the "
                "16-bit run has (compiling its compensated update and its bfloat16 kernels, conversion "
                "buffers); for a small model these outweigh the tensors themselves. On a GPU the column is "
                "the device's peak allocation, where 16-bit tensors take about half the bytes."
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python values (non-finite floats become ``None``).

        Example:
            >>> report.to_dict()["runs"][0]["precision"]  # doctest: +SKIP
            'float32'
        """
        return _finite(asdict(self))  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = 2) -> str:
        """The report as standard JSON (NaN and Inf written as ``null``).

        Args:
            indent: Indentation, or ``None`` for one line.

        Returns:
            The JSON text.

        Example:
            >>> json.loads(report.to_json())["batch_size"]  # doctest: +SKIP
            128
        """
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Save accuracy and time curves side by side (needs matplotlib: ``pip install 'fp16cont[plot]'``).

        Args:
            path: The image file; its suffix picks the format (``.png``, ``.svg``, ``.pdf``).

        Returns:
            The path written.

        Raises:
            MissingDependencyError: If matplotlib is not installed.
            InvalidArgumentError: If matplotlib cannot write the suffix.

        Example:
            >>> report.plot("comparison.png")  # doctest: +SKIP
        """
        from fp16cont.reporting.plotting import plot_comparison

        return plot_comparison(self, path)

    def _summary_row(self, precision: str) -> list[str]:
        runs = self.runs_for(precision)
        label = _display(precision) if runs[0].requested == precision else f"{_display(precision)} ({runs[0].requested})"
        return [
            label,
            str(len(runs)),
            _stat([r.final.loss for r in runs], "{:.4f}"),
            _stat([r.final.val_loss for r in runs], "{:.4f}"),
            _stat([r.initial_val_accuracy for r in runs], "{:.2%}"),
            _stat([r.final.val_accuracy for r in runs], "{:.2%}"),
            _stat([r.wall_seconds for r in runs], "{:.2f}"),
            _stat([r.steady_samples_per_second for r in runs], "{:,.0f}"),
            format_bytes(runs[0].weight_bytes),
            format_bytes(runs[0].optimizer_bytes),
            _peak([r.peak_memory_bytes for r in runs]),
            _updates(runs),
        ]


_SUMMARY_HEADERS = [
    "trains in", "runs", "loss", "val loss", "val acc before", "val acc after",
    "wall s", "samples/s", "weight bytes", "optimizer bytes", "peak memory", "updates",
]
_TRAINS_IN = {
    "float32": "float32 variables, compute and optimizer state (the reference).",
    "float16": "{p} variables, compute and optimizer state (pure 16-bit, fp16cont); float32 islands for "
    "normalization statistics and the output.",
    "bfloat16": "{p} variables, compute and optimizer state (pure 16-bit, fp16cont); float32 islands for "
    "normalization statistics and the output.",
}
_MIXED = "float32 variables and optimizer state, {p} compute (Keras mixed precision)."


def _display(precision: str) -> str:
    """``"bfloat16"`` -> ``"bfloat16 pure"``; float32 and mixed names as they are."""
    return f"{precision} pure" if precision in ("float16", "bfloat16") else precision
_EPOCH_HEADERS = ["precision", "seed", "epoch", "loss", "acc", "val loss", "val acc", "seconds", "samples/s"]


def _epoch_row(run: RunRecord, epoch: EpochRecord) -> list[str]:
    return [
        run.precision, str(run.seed), str(epoch.epoch),
        _stat([epoch.loss], "{:.4f}"), _stat([epoch.accuracy], "{:.2%}"),
        _stat([epoch.val_loss], "{:.4f}"), _stat([epoch.val_accuracy], "{:.2%}"),
        f"{epoch.seconds:.2f}", f"{epoch.samples_per_second:,.0f}",
    ]


def _stat(values: list[float | None], fmt: str) -> str:
    """Format the mean of the values (``± std`` for several), ``-`` when absent."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return "-"
    mean = float(np.mean(present))
    if len(present) == 1 or not math.isfinite(mean):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(float(np.std(present)))}"


def _peak(values: list[int | None]) -> str:
    present = [v for v in values if v is not None]
    return format_bytes(max(present)) if present else "n/a"


def _updates(runs: tuple[RunRecord, ...]) -> str:
    """How the optimizer updated: compensation, loss scaling, NaN-guard rollbacks (summed over runs)."""
    parts = [runs[0].compensation or "plain"]
    scales = [r.loss_scale for r in runs if r.loss_scale is not None]
    if scales:
        parts.append(f"loss scale {min(scales):g}, {sum(r.skipped_steps for r in runs)} skipped")
    rollbacks = sum(r.rollbacks for r in runs)
    if rollbacks:
        parts.append(f"{rollbacks} rollback(s)")
    return ", ".join(parts)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value

