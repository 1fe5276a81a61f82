"""Export a trained 16-bit model back to float32 for deployment.

Example:
    >>> model32 = export_float32(model16)  # doctest: +SKIP
    >>> model32.save("deploy.keras")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal, overload

import keras
import numpy as np

from fp16cont.convert.architecture import check_built, clone_with_policies
from fp16cont.convert.sources import variable_arrays
from fp16cont.convert.verify import compare_models
from fp16cont.errors import InvalidArgumentError, NonFiniteOutputError, OutputMismatchError, check_bool
from fp16cont.reporting.results import Verification

__all__ = ["export_float32"]


@overload
def export_float32(
    model: keras.Model, *, verify: bool = True, tolerance: float = 0.05, return_report: Literal[False] = False
) -> keras.Model: ...


@overload
def export_float32(
    model: keras.Model, *, verify: bool = True, tolerance: float = 0.05, return_report: Literal[True]
) -> tuple[keras.Model, Verification | None]: ...


def export_float32(
    model: keras.Model, *, verify: bool = True, tolerance: float = 0.05, return_report: bool = False
) -> keras.Model | tuple[keras.Model, Verification | None]:
    """A float32 copy of a (16-bit) model: same architecture, exact weights.

    Every 16-bit value is exactly representable in float32, so the copy holds
    the trained weights bit for bit (widened). The 16-bit model is not
    modified. With ``verify``, one probe batch runs through both models and
    their predictions must agree.

    Args:
        model: A built model, typically trained by :func:`continue_training`.
        verify: Compare both models on a probe batch.
        tolerance: Largest accepted absolute output difference.
        return_report: Also return the probe check (a
            :class:`~fp16cont.reporting.results.Verification`, ``None``
            without ``verify``).

    Returns:
        The float32 model (uncompiled), or ``(model32, verification)`` with
        ``return_report=True``. Nothing is attached to the model.

    Raises:
        InvalidArgumentError: For a non-boolean ``verify``/``return_report``
            or a negative ``tolerance``.
        ModelNotBuiltError: If the model was never built.
        RebuildError: If the architecture cannot be rebuilt from its config.
        NonFiniteOutputError: If the float32 copy's outputs hold NaN/Inf.
        OutputMismatchError: If the finite outputs disagree beyond ``tolerance``.

    Example:
        >>> m32, check = export_float32(m16, return_report=True)  # doctest: +SKIP
        >>> check.max_abs_diff < 0.05  # doctest: +SKIP
        True
    """
    _check_flags(verify, tolerance, return_report)
    check_built(model)
    exported = clone_with_policies(model, lambda layer: "float32")
    for variable, value in zip(exported.weights, variable_arrays(model)):
        variable.assign(value.astype(np.float32) if "float" in str(value.dtype) else value)
    report = compare_models(exported, model) if verify else None
    if report is not None and not np.isfinite(report.max_abs_diff):
        raise NonFiniteOutputError(
            f"The float32 export of {model.name!r} or the model itself gives NaN/Inf on a probe batch. "
            "Fix: check the 16-bit model's weights for NaN/Inf (training diverged?) and export a checkpoint "
            "saved before that."
        )
    if report is not None and report.max_abs_diff > tolerance:
        raise OutputMismatchError(
            f"The float32 export of {model.name!r} differs from the 16-bit model by "
            f"{report.max_abs_diff:.3g} on a probe batch (tolerance {tolerance}). Fix: check for "
            "activations near the 16-bit range limit, or raise tolerance= if this is expected."
        )
    return (exported, report) if return_report else exported


def _check_flags(verify: object, tolerance: object, return_report: object) -> None:
    check_bool("verify", verify, "leave it True")
    check_bool("return_report", return_report, "pass True to get (model32, verification)")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise InvalidArgumentError(
            f"Argument `tolerance` should be a non-negative number. Received: {tolerance!r}. Fix: leave it 0.05."
        )
