"""Frozen report dataclasses returned by the public functions.

Example:
    >>> import numpy as np, fp16cont
    >>> q = fp16cont.quantize_weights([np.array([1.0, 1e-9], np.float32)], "float16")
    >>> q.report.total("flushed_to_zero")
    1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fp16cont.reporting.tables import format_bytes, render_table

__all__ = ["VariableAudit", "QuantizationReport", "Verification", "BuildReport", "TrainingResult"]

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
        kept_float32: The variable stays float32 (``on_overflow="keep_float32"``).
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

    Attributes:
        precision: The 16-bit format.
        mode: ``"pure"`` or ``"mixed"``.
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

    @property
    def _main_policy(self) -> str:
        return self.precision if self.mode == "pure" else f"mixed_{self.precision}"


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
    """

    model: Any = field(repr=False)
    history: Any = field(repr=False)
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
    guard_events: tuple[Any, ...] = ()
    stagnation: Any = None
    optimizer_state: QuantizationReport | None = None
    initial_epoch: int = 0
    engine: str = "fit"
    engine_reason: str = ""

    @property
    def bytes_per_parameter(self) -> float:
        """(weight + optimizer bytes) per trainable parameter."""
        return (self.weight_bytes + self.optimizer_bytes) / self.parameters if self.parameters else 0.0

    def summary(self) -> str:
        """A table with one row per epoch, then what the model trained in and its byte counts.

        Example:
            >>> print(result.summary())  # doctest: +SKIP
        """
        metrics = {k: v for k, v in self.history.history.items()}
        names = sorted(metrics)
        rows = [
            [i + 1, f"{s:.2f}", f"{r:,.0f}"] + [f"{metrics[n][i]:.4f}" for n in names]
            for i, (s, r) in enumerate(zip(self.epoch_seconds, self.samples_per_second))
        ]
        table = render_table(["epoch", "seconds", "samples/s", *names], rows)
        scale = "" if self.loss_scale is None else f", loss scale {self.loss_scale:g} ({self.skipped_steps} skipped)"
        scale += f", compensation {self.compensation}" if self.compensation else ""
        scale += f", {self.rollbacks} rollback(s)" if self.rollbacks else ""
        scale += f", {self.bytes_per_parameter:.1f} B/param"
        return (
            f"{table}\ntrained in {_trains_in(self.precision)}\n"
            f"bytes of variables: weights {format_bytes(self.weight_bytes)}, optimizer state "
            f"{format_bytes(self.optimizer_bytes)}; {self.wall_seconds:.1f} s{scale}"
        )


def _trains_in(precision: str) -> str:
    """One phrase for what a model of ``precision`` (as :class:`TrainingResult` names it) trains in."""
    if precision.startswith("mixed_"):
        return f"{precision}: float32 variables and optimizer state, {precision.removeprefix('mixed_')} compute"
    if precision in ("float16", "bfloat16"):
        return f"pure {precision}: {precision} variables, compute and optimizer state (float32 islands aside)"
    return f"{precision}: {precision} variables and compute"
