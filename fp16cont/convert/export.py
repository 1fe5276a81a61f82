"""Export a trained 16-bit model back to float32 for deployment.

Example:
    >>> model32 = export_float32(model16)  # doctest: +SKIP
    >>> model32.save("deploy.keras")  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np

from fp16cont.convert.architecture import check_built, clone_with_policies
from fp16cont.errors import NonFiniteOutputError
from fp16cont.convert.sources import variable_arrays
from fp16cont.convert.verify import compare_models

__all__ = ["export_float32"]


def export_float32(model: keras.Model, *, verify: bool = True, tolerance: float = 0.05) -> keras.Model:
    """A float32 copy of a (16-bit) model: same architecture, exact weights.

    Every 16-bit value is exactly representable in float32, so the copy holds
    the trained weights bit for bit (widened). The 16-bit model is not
    modified. With ``verify``, one probe batch runs through both models and
    their predictions must agree.

    Args:
        model: A built model, typically trained by :func:`continue_training`.
        verify: Compare both models on a probe batch.
        tolerance: Largest accepted absolute output difference.

    Returns:
        The float32 model (uncompiled); its check is ``model32.fp16cont_report``.

    Raises:
        ModelNotBuiltError: If the model was never built.
        RebuildError: If the architecture cannot be rebuilt from its config.
        NonFiniteOutputError: If the outputs disagree beyond ``tolerance``.

    Example:
        >>> m32 = export_float32(m16)  # doctest: +SKIP
    """
    check_built(model)
    exported = clone_with_policies(model, lambda layer: "float32")
    for variable, value in zip(exported.weights, variable_arrays(model)):
        variable.assign(value.astype(np.float32) if "float" in str(value.dtype) else value)
    report = compare_models(exported, model) if verify else None
    if report is not None and report.max_abs_diff > tolerance:
        raise NonFiniteOutputError(
            f"The float32 export of {model.name!r} differs from the 16-bit model by "
            f"{report.max_abs_diff:.3g} on a probe batch (tolerance {tolerance}). Fix: check for "
            "activations near the 16-bit range limit, or raise tolerance= if this is expected."
        )
    exported.fp16cont_report = report
    return exported
