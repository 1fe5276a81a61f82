"""Cast float32 weights to 16-bit with an exact audit of what the cast did.

Rounding is round-to-nearest-even, bit-identical to ``tf.cast`` and
``ndarray.astype`` (numpy for float16, ``ml_dtypes`` for bfloat16).

Example:
    >>> import numpy as np, fp16cont
    >>> q = fp16cont.quantize_weights([np.array([1.0, 70000.0], np.float32)], "bfloat16")
    >>> q.arrays[0].dtype.name, q.report.ok
    ('bfloat16', True)
"""

from __future__ import annotations

from typing import Any, Literal

import keras
import numpy as np

from fp16cont.errors import (
    InvalidArgumentError,
    InvalidSourceError,
    NonFiniteWeightsError,
    WeightOverflowError,
)
from fp16cont.hardware import select_precision
from fp16cont.numerics import LowPrecision, facts, is_low_float, numpy_dtype
from fp16cont.reporting.results import QuantizationReport, QuantizedWeights, VariableAudit
from fp16cont.convert.sources import check_float32_source, read_weights

__all__ = ["QuantizedWeights", "quantize_weights", "OnOverflow", "OnNonFinite"]

OnOverflow = Literal["raise", "saturate", "keep_float32"]
OnNonFinite = Literal["raise", "keep"]
_ON_OVERFLOW = ("raise", "saturate", "keep_float32")
_ON_NONFINITE = ("raise", "keep")


def quantize_weights(
    source: Any,
    precision: str = "auto",
    *,
    on_overflow: OnOverflow = "raise",
    on_nonfinite: OnNonFinite = "raise",
    model: keras.Model | None = None,
) -> QuantizedWeights:
    """Cast a float32 model's weights to 16-bit and audit every value.

    The source is read, never modified: a model keeps its weights, dtypes and
    compile state bit for bit.

    Args:
        source: A built ``keras.Model``; a path to a ``.keras`` / ``.h5`` model
            file; a path to a ``.weights.h5`` file (pass ``model`` too); or a
            list / dict of numpy arrays.
        precision: ``"float16"``, ``"bfloat16"`` or ``"auto"`` (the fast format
            for this hardware: float16 on CUDA GPUs, bfloat16 on CPUs/TPUs).
        on_overflow: What to do with finite values that round to ±Inf:
            ``"raise"`` a :class:`WeightOverflowError`, ``"saturate"`` them to
            ±largest finite value, or ``"keep_float32"`` (those variables stay
            float32, also in :func:`build_fp16_model`).
        on_nonfinite: ``"raise"`` when the source already holds NaN/Inf, or
            ``"keep"`` them (counted in the report).
        model: The architecture of a ``.weights.h5`` source.

    Returns:
        :class:`QuantizedWeights` with the arrays and the report.

    Raises:
        InvalidArgumentError: For an unknown ``precision``/``on_overflow``/``on_nonfinite``.
        InvalidSourceError: If the source cannot be read, or holds non-numeric
            arrays (strings, objects, complex). Integer and bool arrays (counters,
            lookup tables) pass through untouched and are marked
            ``passed_through`` in the report.
        ModelNotBuiltError: If a model source has no weights yet.
        AlreadyLowPrecisionError: If a variable is already 16-bit.
        WeightOverflowError: With ``on_overflow="raise"``, naming the variables.
        NonFiniteWeightsError: With ``on_nonfinite="raise"``, naming the variables.

    Example:
        >>> import keras, fp16cont
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> q = fp16cont.quantize_weights(m, "bfloat16")
        >>> print(q.report.summary())  # doctest: +SKIP
    """
    _check_choice("on_overflow", on_overflow, _ON_OVERFLOW)
    _check_choice("on_nonfinite", on_nonfinite, _ON_NONFINITE)
    target: LowPrecision = select_precision(precision, warn=False).precision
    weights = read_weights(source, model=model)
    _check_numeric(weights.paths, weights.arrays)
    _check_not_low(weights.paths, weights.arrays)
    results = [_cast_one(p, a, target, on_overflow) for p, a in zip(weights.paths, weights.arrays)]
    audits = tuple(audit for _, audit in results)
    _raise_for_nonfinite(audits, on_nonfinite)
    if on_overflow == "raise":
        _raise_for_overflow(audits, weights.arrays, target)
    arrays = tuple(array for array, _ in results)
    report = QuantizationReport(
        precision=target,
        on_overflow=on_overflow,
        variables=audits,
        bytes_before=sum(int(a.nbytes) for a in weights.arrays),
        bytes_after=sum(int(a.nbytes) for a in arrays),
    )
    return QuantizedWeights(weights.paths, arrays, target, report)


def audit_cast(x: np.ndarray, precision: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Round ``x`` to ``precision`` and count what the rounding did.

    Works in cache-sized chunks with a fast path for chunks that hold only
    finite, in-range values, so the audit costs a few passes over memory
    (``benchmarks/cast_speed.py`` measures it against a bare ``astype``).

    Args:
        x: A floating-point array.
        precision: ``"float16"`` or ``"bfloat16"``.

    Returns:
        The rounded array and the counts/errors of :class:`VariableAudit`.

    Example:
        >>> _, counts = audit_cast(np.array([1e-9, 1e5], np.float32), "float16")
        >>> counts["flushed_to_zero"], counts["overflow"]
        (1, 1)
    """
    flat = np.ravel(np.asarray(x, dtype=np.float32))
    rounded = np.empty(flat.shape, dtype=numpy_dtype(precision))
    totals = dict.fromkeys(("overflow", "flushed_to_zero", "subnormal", "nonfinite"), 0)
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0}
    normal = facts(precision).smallest_normal
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        out = rounded[start : start + _CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(out, part, casting="unsafe")
            counts, errors = _audit_chunk(part, out.astype(np.float32), normal)
        for key, value in counts.items():
            totals[key] += value
        for key, value in errors.items():
            worst[key] = max(worst[key], value)
    return rounded.reshape(np.shape(x)), {**totals, **worst}


_CHUNK = 1 << 16  # 256 KiB of float32: the working set stays in the L2 cache


def _audit_chunk(part: np.ndarray, back: np.ndarray, normal: float) -> tuple[dict[str, int], dict[str, float]]:
    diff = np.subtract(back, part)
    np.abs(diff, out=diff)
    max_abs = float(diff.max(initial=0.0))
    if not np.isfinite(max_abs):  # NaN/Inf in the source or overflow: the careful path
        return _audit_chunk_nonfinite(part, back, normal)
    magnitude = np.abs(part)
    small = magnitude < normal  # a superset of the values that end below the smallest normal
    counts = {"overflow": 0, "flushed_to_zero": 0, "subnormal": 0, "nonfinite": 0}
    if small.any():
        src, out = part[small], back[small]
        counts["flushed_to_zero"] = int(np.count_nonzero((src != 0) & (out == 0)))
        counts["subnormal"] = int(np.count_nonzero((out != 0) & (np.abs(out) < normal)))
    np.maximum(magnitude, _TINY, out=magnitude)  # x == 0 rounds exactly: 0 / tiny == 0
    np.divide(diff, magnitude, out=diff)
    return counts, {"max_abs_error": max_abs, "max_rel_error": float(diff.max(initial=0.0))}


_TINY = np.float32(np.finfo(np.float32).smallest_subnormal)


def _audit_chunk_nonfinite(part: np.ndarray, back: np.ndarray, normal: float) -> tuple[dict[str, int], dict[str, float]]:
    finite_src = np.isfinite(part)
    finite_out = np.isfinite(back)
    both = finite_src & finite_out
    counts = {
        "overflow": int(np.count_nonzero(finite_src & ~finite_out)),
        "nonfinite": int(part.size - np.count_nonzero(finite_src)),
    }
    src, out = part[both], back[both]
    fine, errors = _audit_chunk(src, out, normal)
    counts["flushed_to_zero"] = fine["flushed_to_zero"]
    counts["subnormal"] = fine["subnormal"]
    return counts, errors


def _cast_one(path: str, x: np.ndarray, target: LowPrecision, on_overflow: str) -> tuple[np.ndarray, VariableAudit]:
    base = dict(path=path, shape=tuple(int(d) for d in x.shape), source_dtype=x.dtype.name, count=int(x.size))
    if not np.issubdtype(x.dtype, np.floating):
        return x.copy(), VariableAudit(target_dtype=x.dtype.name, passed_through=True, **base)
    rounded, counts = audit_cast(x, target)
    if counts["overflow"] and on_overflow == "keep_float32":  # stored exactly: no rounding to report
        return x.astype(np.float32), VariableAudit(target_dtype="float32", kept_float32=True, nonfinite=counts["nonfinite"], **base)
    if counts["overflow"] and on_overflow == "saturate":
        limit = facts(target).max
        rounded = np.clip(x.astype(np.float32), -limit, limit).astype(numpy_dtype(target))
    return rounded, VariableAudit(target_dtype=target, **base, **counts)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgumentError(
            f"Argument `{name}` should be one of {', '.join(map(repr, allowed))}. "
            f"Received: {name}={value!r}. Fix: pass {name}={allowed[0]!r} (the default)."
        )


def _check_numeric(paths: tuple[str, ...], arrays: tuple[np.ndarray, ...]) -> None:
    bad = [
        f"{p} ({a.dtype})"
        for p, a in zip(paths, arrays)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_)
        and not is_low_float(a.dtype)
    ]
    if bad:
        raise InvalidSourceError(
            f"Argument `source` should hold numeric arrays (floating point, integer or bool). "
            f"Received: {len(bad)} non-numeric array(s): {', '.join(bad[:5])}. Fix: pass only the "
            "model's weights, e.g. model.get_weights(); keep strings, objects and complex values "
            "(vocabularies, metadata) out of the weights."
        )


def _check_not_low(paths: tuple[str, ...], arrays: tuple[np.ndarray, ...]) -> None:
    check_float32_source(
        paths, [a.dtype for a in arrays], "The source",
        "pass the float32 model (continue_training() can train a 16-bit model directly).",
    )


def _raise_for_nonfinite(audits: tuple[VariableAudit, ...], on_nonfinite: str) -> None:
    bad = [f"{a.path} ({a.nonfinite})" for a in audits if a.nonfinite]
    if bad and on_nonfinite == "raise":
        raise NonFiniteWeightsError(
            f"The source weights already hold NaN/Inf in {len(bad)} variable(s): "
            f"{', '.join(bad[:5])}. Fix: restore the weights from a checkpoint saved before "
            "training diverged, or pass on_nonfinite='keep' to audit them anyway."
        )


def _raise_for_overflow(
    audits: tuple[VariableAudit, ...], arrays: tuple[np.ndarray, ...], target: LowPrecision
) -> None:
    bad = [(a, x) for a, x in zip(audits, arrays) if a.overflow]
    if not bad:
        return
    largest = max(float(np.nanmax(np.abs(np.where(np.isfinite(x), x, 0)))) for _, x in bad)
    names = ", ".join(f"{a.path} ({a.overflow} values)" for a, _ in bad[:5])
    raise WeightOverflowError(
        f"{sum(a.overflow for a, _ in bad)} value(s) exceed the {target} range (largest finite "
        f"{facts(target).max:g}) in {len(bad)} variable(s): {names}; largest |value| {largest:g}. "
        "Fix: use precision='bfloat16' (range up to 3.4e38), or on_overflow='saturate' to clip "
        "them, or on_overflow='keep_float32' to keep those variables in float32."
    )
