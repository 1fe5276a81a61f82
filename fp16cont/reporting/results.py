"""Every result fp16cont returns, as frozen values in one module.

Public functions return these; none is attached to a model or an optimizer.
Grouped by pipeline stage: hardware (:class:`Device`, :class:`PrecisionChoice`),
conversion (:class:`VariableAudit`, :class:`QuantizationReport`,
:class:`QuantizedWeights`, :class:`Verification`, :class:`BuildReport`),
training (:class:`GuardEvent`, :class:`EngineChoice`, :class:`DeviceFitResult`,
:class:`LayerStagnation`, :class:`StagnationReport`, :class:`TrainingResult`,
:class:`BatchNormRecalibration`)
and reporting (:class:`MemoryBaseline`, :class:`PeakMemory`,
:class:`EpochRecord`, :class:`RunRecord`, :class:`ComparisonReport`).
The modules that compute them re-export them under their old names.

Example:
    >>> import numpy as np, fp16cont
    >>> q = fp16cont.quantize_weights([np.array([1.0, 1e-9], np.float32)], "float16")
    >>> q.report.total("flushed_to_zero")
    1
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np

from fp16cont.errors import InvalidArgumentError
from fp16cont.numerics import LowPrecision
from fp16cont.reporting.tables import format_bytes, render_table

__all__ = [
    "Device",
    "PrecisionChoice",
    "VariableAudit",
    "QuantizationReport",
    "QuantizedWeights",
    "Verification",
    "BuildReport",
    "GuardEvent",
    "EngineChoice",
    "DeviceFitResult",
    "LayerStagnation",
    "StagnationReport",
    "TrainingResult",
    "BatchNormRecalibration",
    "MemoryBaseline",
    "PeakMemory",
    "EpochRecord",
    "RunRecord",
    "ComparisonReport",
]


# -- hardware ------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """The accelerator that Keras will train on.

    Attributes:
        kind: ``"gpu"``, ``"tpu"`` or ``"cpu"``.
        name: A human-readable description.
        compute_capability: CUDA compute capability (major, minor) of a GPU.
        cpu_bf16: Whether the CPU has bfloat16 instructions (AMX/AVX512-BF16).
    """

    kind: str
    name: str
    compute_capability: tuple[int, int] | None = None
    cpu_bf16: bool = False


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved 16-bit format and why it was chosen.

    Attributes:
        precision: ``"float16"`` or ``"bfloat16"``.
        reason: One sentence a user can read.
        fast: Whether a speed-up over float32 is expected on this device.
    """

    precision: LowPrecision
    reason: str
    fast: bool


# -- conversion ----------------------------------------------------------------
_COUNTS = ("overflow", "flushed_to_zero", "subnormal", "nonfinite")


@dataclass(frozen=True)
class VariableAudit:
    """What casting one variable to 16-bit did to its values.

    Attributes:
        path: The variable's path (``"dense/kernel"``) or list index / dict key.
        shape: The variable's shape.
        source_dtype: The dtype before the cast.
        target_dtype: The dtype after the cast (unchanged for passed-through
            integer/bool variables and for variables kept in float32).
        count: Number of values.
        overflow: Finite values that round to ±Inf in the 16-bit format
            (``|x| >= max + ulp/2``) before any saturation.
        flushed_to_zero: Non-zero finite values that round to zero.
        subnormal: Values whose 16-bit result is subnormal (non-zero, below
            the smallest normal).
        nonfinite: NaN or Inf values already present in the source.
        max_abs_error: Largest ``|cast(x) - x|`` over finite results.
        max_rel_error: Largest ``|cast(x) - x| / |x|`` over non-zero ``x``
            with finite results.
        kept_float32: The variable stays float32 (``on_overflow="keep_float32"``,
            because some of its values would overflow); it is stored exactly,
            so its rounding counts and errors are zero.
        passed_through: An integer/bool variable copied untouched.
    """

    path: str
    shape: tuple[int, ...]
    source_dtype: str
    target_dtype: str
    count: int
    overflow: int = 0
    flushed_to_zero: int = 0
    subnormal: int = 0
    nonfinite: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    kept_float32: bool = False
    passed_through: bool = False


@dataclass(frozen=True)
class QuantizationReport:
    """Audit of a whole float32 → 16-bit cast.

    Attributes:
        precision: The 16-bit format (``"float16"`` or ``"bfloat16"``).
        on_overflow: How overflowing values were handled.
        variables: One :class:`VariableAudit` per variable, in weight order.
        bytes_before: Bytes of all variables before the cast.
        bytes_after: Bytes of all variables after the cast.
    """

    precision: str
    on_overflow: str
    variables: tuple[VariableAudit, ...]
    bytes_before: int
    bytes_after: int

    def total(self, name: str) -> int:
        """Sum one count (``"overflow"``, ``"flushed_to_zero"``, ``"subnormal"``,
        ``"nonfinite"`` or ``"count"``) over all variables.

        Args:
            name: The :class:`VariableAudit` field to add up.

        Returns:
            The total.

        Raises:
            AttributeError: If ``name`` is not a count field.

        Example:
            >>> QuantizationReport("float16", "raise", (), 0, 0).total("overflow")
            0
        """
        return sum(int(getattr(v, name)) for v in self.variables)

    @property
    def max_abs_error(self) -> float:
        """Largest absolute rounding error over all variables."""
        return max((v.max_abs_error for v in self.variables), default=0.0)

    @property
    def max_rel_error(self) -> float:
        """Largest relative rounding error over all variables."""
        return max((v.max_rel_error for v in self.variables), default=0.0)

    @property
    def ok(self) -> bool:
        """True when no value overflowed and no NaN/Inf was present."""
        return self.total("overflow") == 0 and self.total("nonfinite") == 0

    @property
    def float32_paths(self) -> tuple[str, ...]:
        """Paths of the floating-point variables kept in float32."""
        return tuple(v.path for v in self.variables if v.kept_float32)

    def summary(self, markdown: bool = False) -> str:
        """A readable table: one row per variable, then the totals.

        Args:
            markdown: Render a Markdown table instead of plain text.

        Returns:
            The table and a one-line verdict.
        """
        headers = ["variable", "shape", "dtype", "count", *_COUNTS, "max abs err", "max rel err"]
        rows: list[list[Any]] = [
            [v.path, "x".join(map(str, v.shape)) or "scalar", f"{v.source_dtype}->{v.target_dtype}", v.count]
            + [getattr(v, c) for c in _COUNTS]
            + [f"{v.max_abs_error:.3g}", f"{v.max_rel_error:.3g}"]
            for v in self.variables
        ]
        rows.append(
            ["TOTAL", "", self.precision, self.total("count")]
            + [self.total(c) for c in _COUNTS]
            + [f"{self.max_abs_error:.3g}", f"{self.max_rel_error:.3g}"]
        )
        verdict = (
            f"{'OK' if self.ok else 'NOT OK'}: {format_bytes(self.bytes_before)} -> "
            f"{format_bytes(self.bytes_after)} ({self.precision}, on_overflow={self.on_overflow!r})"
        )
        return render_table(headers, rows, markdown) + "\n" + verdict


@dataclass(frozen=True)
class QuantizedWeights:
    """16-bit weights in the model's weight order, with their audit.

    Attributes:
        paths: Variable paths (list indices / dict keys for raw arrays).
        arrays: The cast values: 16-bit for floating-point variables, float32
            for those kept in float32, untouched for integer/bool variables.
        precision: ``"float16"`` or ``"bfloat16"``.
        report: The :class:`QuantizationReport`.
    """

    paths: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    precision: LowPrecision
    report: QuantizationReport

    def __len__(self) -> int:
        return len(self.arrays)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.arrays)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays keyed by variable path."""
        return dict(zip(self.paths, self.arrays))


@dataclass(frozen=True)
class Verification:
    """One batch run through the float32 source and the rebuilt model.

    Attributes:
        batch_size: Rows in the probe batch.
        max_abs_diff: Largest absolute difference of the outputs.
        argmax_agreement: Share of rows whose argmax prediction agrees
            (``None`` when the output has a single unit).
    """

    batch_size: int
    max_abs_diff: float
    argmax_agreement: float | None


@dataclass(frozen=True)
class BuildReport:
    """What :func:`fp16cont.build_fp16_model` built, measured on the built model.

    Returned by ``build_fp16_model(..., return_report=True)``, and recomputed
    from any built model by :func:`fp16cont.inspect` (which leaves
    ``quantization`` and ``verification`` at ``None``).

    Attributes:
        precision: The 16-bit format (``"float32"`` for a model with none).
        mode: ``"pure"``, ``"mixed"`` or (from :func:`fp16cont.inspect` only) ``"float32"``.
        layer_policies: ``(layer path, dtype policy name)`` for every layer.
        float32_variables: Paths of floating-point variables kept in float32.
        weight_bytes: Bytes of all the model's variables.
        quantization: The audit of the cast, when weights were cast.
        verification: The probe batch comparison, when ``verify=True``.
        dtype_mix: ``(dtype, variables, values, bytes)`` per variable dtype,
            read from the built model's variables.
        islands: ``(layer path, policy, reason)`` for each layer that does not
            run in the main policy.

    Example:
        >>> r = BuildReport("bfloat16", "pure", (), (), 4, dtype_mix=(("bfloat16", 1, 2, 4),))
        >>> r.sixteen_bit_share
        1.0
    """

    precision: str
    mode: str
    layer_policies: tuple[tuple[str, str], ...]
    float32_variables: tuple[str, ...]
    weight_bytes: int
    quantization: QuantizationReport | None = None
    verification: Verification | None = None
    dtype_mix: tuple[tuple[str, int, int, int], ...] = ()
    islands: tuple[tuple[str, str, str], ...] = ()

    @property
    def sixteen_bit_share(self) -> float | None:
        """Share of the floating-point values stored in 16-bit (``None`` without floats)."""
        floats = [(d, n) for d, _, n, _ in self.dtype_mix if "float" in d]
        total = sum(n for _, n in floats)
        if not total:
            return None
        return sum(n for d, n in floats if d in ("float16", "bfloat16")) / total

    def summary(self) -> str:
        """A few readable lines about the rebuilt model: the measured dtype mix,
        the islands and why, and the probe check."""
        share = self.sixteen_bit_share
        stored = "n/a" if share is None else f"{share:.1%}"
        lines = [
            f"{self.mode} {self.precision} model, {format_bytes(self.weight_bytes)} of weights, "
            f"{stored} of floating-point values stored in 16-bit, "
            f"{len(self.float32_variables)} float32 variable(s)"
        ]
        if self.dtype_mix:
            lines.append(
                "dtypes: "
                + ", ".join(f"{d} {v} var(s) {n:,} values {format_bytes(b)}" for d, v, n, b in self.dtype_mix)
            )
        if self.islands:
            lines.append("islands: " + ", ".join(f"{p} ({pol}: {why})" for p, pol, why in self.islands))
        if self.verification:
            v = self.verification
            agree = "n/a" if v.argmax_agreement is None else f"{v.argmax_agreement:.1%}"
            lines.append(f"verified on {v.batch_size} rows: max |diff| {v.max_abs_diff:.3g}, argmax agreement {agree}")
        return "\n".join(lines)


# -- training ------------------------------------------------------------------
@dataclass(frozen=True)
class GuardEvent:
    """One non-finite event the guard handled.

    Attributes:
        epoch: Zero-based epoch.
        batch: Zero-based batch within the epoch (-1: found at the epoch's end,
            when a NaN reached the weights but not the loss).
        action: ``"rollback"`` (weights restored) or ``"skipped"`` (the loss
            scale optimizer already skipped the step; weights were finite).
        learning_rate: The learning rate after the event.
        loss_scale: The loss scale after the event, when loss scaling is on.
    """

    epoch: int
    batch: int
    action: str
    learning_rate: float | None
    loss_scale: float | None


@dataclass(frozen=True)
class EngineChoice:
    """The execution mode a run used, and why.

    Attributes:
        mode: ``"fit"``, ``"resident"`` or ``"streamed"``.
        steps_per_execution: Steps per compiled call (1 for ``"fit"`` unless
            the model was compiled with more).
        reason: Why this mode was taken.
        convolution_search: Whether cuDNN chose each convolution's algorithm
            by measurement during the call (Keras ``fit`` on torch with CUDA).
    """

    mode: str
    steps_per_execution: int
    reason: str
    convolution_search: bool = False


class DeviceFitResult(NamedTuple):
    """What :func:`device_fit` returns; unpacks as ``history, epoch_seconds``.

    Attributes:
        history: Per-epoch logs, as ``fit(...).history``: ``{"loss": [...],
            "accuracy": [...], ...}``, plus ``"loss_scale"`` and
            ``"skipped_steps"`` when the optimizer scales the loss.
        epoch_seconds: Wall seconds of each epoch; the first includes compilation.
    """

    history: dict[str, list[float]]
    epoch_seconds: list[float]


@dataclass(frozen=True)
class LayerStagnation:
    """One layer's share of cancelled updates in one step.

    Attributes:
        layer: The layer's path.
        intended: Values whose float32 update was non-zero.
        cancelled: Of those, values whose 16-bit weight did not change.
        lost: Of those, values whose update is kept nowhere.
    """

    layer: str
    intended: int
    cancelled: int
    lost: int

    @property
    def cancelled_share(self) -> float:
        """``cancelled / intended`` (0 when nothing moved)."""
        return self.cancelled / self.intended if self.intended else 0.0

    @property
    def lost_share(self) -> float:
        """``lost / intended`` (0 when nothing moved)."""
        return self.lost / self.intended if self.intended else 0.0


@dataclass(frozen=True)
class StagnationReport:
    """Per-layer cancelled and lost updates of the last training step.

    Attributes:
        compensation: The compensation in effect.
        layers: One :class:`LayerStagnation` per layer with 16-bit variables.
    """

    compensation: str
    layers: tuple[LayerStagnation, ...]

    @property
    def cancelled_share(self) -> float:
        """Share of non-zero updates whose 16-bit weight did not move."""
        intended = sum(l.intended for l in self.layers)
        return sum(l.cancelled for l in self.layers) / intended if intended else 0.0

    @property
    def lost_share(self) -> float:
        """Share of non-zero updates kept nowhere."""
        intended = sum(l.intended for l in self.layers)
        return sum(l.lost for l in self.layers) / intended if intended else 0.0

    def summary(self) -> str:
        """A table, one row per layer, then the totals."""
        rows = [[l.layer, l.intended, f"{l.cancelled_share:.1%}", f"{l.lost_share:.1%}"] for l in self.layers]
        rows.append(["TOTAL", sum(l.intended for l in self.layers), f"{self.cancelled_share:.1%}", f"{self.lost_share:.1%}"])
        return render_table(["layer", "updates", "cancelled", "lost"], rows) + f"\ncompensation: {self.compensation}"


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`fp16cont.continue_training` did.

    Attributes:
        model: The trained model (the one passed in, trained in place).
        history: The ``keras.callbacks.History`` of the run.
        precision: What most trainable parameters trained in: ``"float16"`` /
            ``"bfloat16"`` (pure), ``"mixed_float16"`` / ``"mixed_bfloat16"``
            (float32 variables, 16-bit compute) or ``"float32"``.
        wall_seconds: Wall time of the whole ``fit`` call.
        epoch_seconds: Wall time of each epoch (validation included).
        samples_per_second: Training samples per second of each epoch.
        weight_bytes: Bytes of the model's variables.
        optimizer_bytes: Bytes of the optimizer's variables (slots and
            compensation buffers included).
        parameters: Number of trainable parameters.
        compensation: The compensation used (``None`` for none).
        loss_scale: The final dynamic loss scale, when loss scaling was used.
        skipped_steps: Steps the loss scaling skipped for non-finite gradients.
        rollbacks: Times the NaN guard restored the last good state.
        guard_events: What the NaN guard did, event by event.
        stagnation: Cancelled/lost updates of the last step, per layer.
        optimizer_state: Audit of the optimizer state carried over, if any.
        engine: The execution mode that ran the steps (``"fit"``,
            ``"resident"`` or ``"streamed"``); ``engine_reason`` says why.
        initial_epoch: Epochs already done when this run started (resumed
            from ``checkpoint_dir``).
        lora: For a LoRA model, what trains and what is frozen, in which dtype.
        batchnorm: What ``recalibrate_batchnorm=`` did after training
            (``None`` when it was not asked for or the model has no
            BatchNormalization layer).
        sixteen_bit_share: The share of trainable values stored in 16-bit
            (``None`` when not recorded).
        epoch_logs: The names each epoch logged (``val_*`` only in the
            epochs that validated), aligning History's columns in ``summary``.
    """

    model: keras.Model = field(repr=False)
    history: keras.callbacks.History = field(repr=False)
    precision: str
    wall_seconds: float
    epoch_seconds: tuple[float, ...]
    samples_per_second: tuple[float, ...]
    weight_bytes: int
    optimizer_bytes: int
    parameters: int = 0
    compensation: str | None = None
    loss_scale: float | None = None
    skipped_steps: int = 0
    rollbacks: int = 0
    guard_events: tuple[GuardEvent, ...] = ()
    stagnation: StagnationReport | None = None
    optimizer_state: QuantizationReport | None = None
    initial_epoch: int = 0
    engine: str = "fit"
    engine_reason: str = ""
    lora: str | None = None
    batchnorm: BatchNormRecalibration | None = None
    sixteen_bit_share: float | None = None
    epoch_logs: tuple[tuple[str, ...], ...] = ()

    @property
    def bytes_per_parameter(self) -> float:
        """(weight + optimizer bytes) per trainable parameter."""
        return (self.weight_bytes + self.optimizer_bytes) / self.parameters if self.parameters else 0.0

    def summary(self) -> str:
        """A table with one row per epoch, then what the model trained in and its byte counts.

        Example:
            >>> print(result.summary())  # doctest: +SKIP
        """
        metrics = {k: list(v) for k, v in self.history.history.items()}
        names = sorted(metrics)
        epochs = len(self.epoch_seconds)
        columns = {n: _per_epoch(metrics[n], n, self.epoch_logs, epochs) for n in names}
        rows = [
            [self.initial_epoch + i + 1, f"{s:.2f}", f"{r:,.0f}"] + [columns[n][i] for n in names]
            for i, (s, r) in enumerate(zip(self.epoch_seconds, self.samples_per_second))
        ]
        table = render_table(["epoch", "seconds", "samples/s", *names], rows)
        scale = "" if self.loss_scale is None else f", loss scale {self.loss_scale:g} ({self.skipped_steps} skipped)"
        scale += f", compensation {self.compensation}" if self.compensation else ""
        scale += f", {self.rollbacks} rollback(s)" if self.rollbacks else ""
        scale += f", {self.bytes_per_parameter:.1f} B/param"
        return (
            f"{table}\ntrained in {_trains_in(self.precision, self.sixteen_bit_share)}\n"
            f"bytes of variables: weights {format_bytes(self.weight_bytes)}, optimizer state "
            f"{format_bytes(self.optimizer_bytes)}; {self.wall_seconds:.1f} s{scale}"
        ) + (f"\n{self.lora}" if self.lora else "") + (f"\n{self.batchnorm.summary()}" if self.batchnorm else "")


@dataclass(frozen=True)
class BatchNormRecalibration:
    """What :func:`fp16cont.recalibrate_batchnorm` did.

    Attributes:
        layers: Paths of the BatchNormalization layers whose moving mean and
            variance were replaced by population statistics.
        skipped: Paths of frozen (``trainable=False``) BatchNormalization
            layers, left as they were: training never updates them either.
        batches: Forward passes (batches) the statistics were averaged over.
        samples: Samples in those batches.
        shifts: Per layer of ``layers``, the largest change of a channel's
            moving mean, in units of its new standard deviation
            (``max |new_mean - old_mean| / sqrt(new_var + epsilon)``): how far
            the old moving statistics were from the population.
    """

    layers: tuple[str, ...]
    skipped: tuple[str, ...]
    batches: int
    samples: int
    shifts: tuple[float, ...] = ()

    def summary(self) -> str:
        """One line: how many layers were recalibrated over how much data.

        Example:
            >>> BatchNormRecalibration(("bn",), (), 3, 300, (0.25,)).summary()
            'recalibrated 1 BatchNormalization layer(s) over 3 batches (300 samples); largest mean shift 0.25 std'
        """
        if not self.layers:
            frozen = f" ({len(self.skipped)} frozen, left as they were)" if self.skipped else ""
            return f"no BatchNormalization layer recalibrated{frozen}"
        frozen = f", {len(self.skipped)} frozen left as they were" if self.skipped else ""
        return (
            f"recalibrated {len(self.layers)} BatchNormalization layer(s) over {self.batches} batches "
            f"({self.samples} samples); largest mean shift {max(self.shifts, default=0.0):.2f} std{frozen}"
        )


def _per_epoch(values: list[float], name: str, epoch_logs: tuple[tuple[str, ...], ...], epochs: int) -> list[str]:
    """One History column as text per epoch: ``"-"`` where the epoch logged no value (``validation_freq``)."""
    if len(epoch_logs) == epochs and len(values) < epochs:
        found = iter(values)
        return [f"{next(found, float('nan')):.4f}" if name in logs else "-" for logs in epoch_logs]
    return [f"{values[i]:.4f}" if i < len(values) else "-" for i in range(epochs)]


def _trains_in(precision: str, share: float | None = None) -> str:
    """One phrase for what a model of ``precision`` (as :class:`TrainingResult` names it) trains in."""
    if precision.startswith("mixed_"):
        return f"{precision}: float32 variables and optimizer state, {precision.removeprefix('mixed_')} compute"
    if precision in ("float16", "bfloat16"):
        if share is None:
            islands = "float32 islands aside"
        elif share >= 0.9995:
            islands = "all trainable values"
        else:
            islands = f"{share:.1%} of the trainable values; the rest in float32 islands"
        return f"pure {precision}: {precision} variables, compute and optimizer state ({islands})"
    return f"{precision}: {precision} variables and compute"


# -- reporting -----------------------------------------------------------------
@dataclass(frozen=True)
class MemoryBaseline:
    """Where a measurement started.

    Attributes:
        method: A key of :data:`METHODS`.
        start_bytes: Bytes in use (GPU), or the peak RSS right after the reset
            (``"rss-reset"``) or before the work (``"rss"``).
        start_peak_bytes: The backend's peak counter at the start (``"jax-gpu"``).
    """

    method: str
    start_bytes: int
    start_peak_bytes: int = 0


@dataclass(frozen=True)
class PeakMemory:
    """The result of a measurement.

    Attributes:
        bytes: Peak growth in bytes, or ``None`` when nothing could be measured.
        method: A key of :data:`METHODS`; ``describe_method(method)`` says what
            the number means.
    """

    bytes: int | None
    method: str


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

