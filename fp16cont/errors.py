"""Typed errors and warnings raised by fp16cont.

Every error derives from :class:`Fp16ContError` and from the closest builtin
exception (``ValueError``, ``TypeError``, ...), so existing ``except`` clauses
keep working. Each message says what was wrong and how to fix it.

Example:
    >>> import fp16cont
    >>> try:
    ...     fp16cont.quantize_weights([], precision="float8")
    ... except fp16cont.Fp16ContError as err:
    ...     print(type(err).__name__)
    InvalidArgumentError
"""

from __future__ import annotations

__all__ = [
    "Fp16ContError",
    "InvalidArgumentError",
    "InvalidSourceError",
    "WeightMismatchError",
    "WeightOverflowError",
    "NonFiniteWeightsError",
    "NonFiniteOutputError",
    "AlreadyLowPrecisionError",
    "ModelNotBuiltError",
    "RebuildError",
    "MissingLossError",
    "DataError",
    "MissingDependencyError",
    "LossScaleFloorError",
    "TrainingDivergedError",
    "PerformanceWarning",
]


class Fp16ContError(Exception):
    """Base class of every error raised by fp16cont."""


class InvalidArgumentError(Fp16ContError, ValueError):
    """An argument has a value fp16cont does not accept."""


class InvalidSourceError(Fp16ContError, TypeError):
    """The model or weights source cannot be read."""


class WeightMismatchError(Fp16ContError, ValueError):
    """Weights do not fit the model (count, shape or dtype)."""


class WeightOverflowError(Fp16ContError, OverflowError):
    """Float32 values lie beyond the largest finite value of the 16-bit format."""


class NonFiniteWeightsError(Fp16ContError, ValueError):
    """The source weights already hold NaN or Inf."""


class NonFiniteOutputError(Fp16ContError, FloatingPointError):
    """The 16-bit model produced NaN or Inf where the float32 model did not."""


class AlreadyLowPrecisionError(Fp16ContError, ValueError):
    """The source model already keeps 16-bit floating-point variables."""


class ModelNotBuiltError(Fp16ContError, ValueError):
    """The model has no weights yet because it was never built."""


class RebuildError(Fp16ContError, TypeError):
    """The architecture cannot be rebuilt from the model's config."""


class MissingLossError(Fp16ContError, ValueError):
    """Training was asked for but the model has no loss."""


class DataError(Fp16ContError, ValueError):
    """The training or validation data does not fit the model or the call."""


class MissingDependencyError(Fp16ContError, ImportError):
    """An optional package that the call needs is not installed."""


class LossScaleFloorError(Fp16ContError, FloatingPointError):
    """The dynamic loss scale hit its floor repeatedly: float16 cannot proceed."""


class TrainingDivergedError(Fp16ContError, FloatingPointError):
    """Training produced NaN/Inf too often; the last good weights were restored."""


class PerformanceWarning(UserWarning):
    """The requested precision is known to run slowly on this hardware."""
