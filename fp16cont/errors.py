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

from numbers import Integral

__all__ = [
    "Fp16ContError",
    "InvalidArgumentError",
    "InvalidSourceError",
    "SourceFileNotFoundError",
    "UnsupportedBackendError",
    "OutputMismatchError",
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
]  # and the argument checks that raise them: is_int, check_int, check_bool


class Fp16ContError(Exception):
    """Base class of every error raised by fp16cont."""


class InvalidArgumentError(Fp16ContError, ValueError):
    """An argument has a value fp16cont does not accept."""


class InvalidSourceError(Fp16ContError, TypeError):
    """The model or weights source cannot be read."""


class SourceFileNotFoundError(Fp16ContError, FileNotFoundError):
    """A model, weights or data file that was named does not exist."""


class UnsupportedBackendError(Fp16ContError, RuntimeError):
    """The call needs another Keras backend, or a backend feature this setup lacks."""


class OutputMismatchError(Fp16ContError, ValueError):
    """Two models that should compute the same outputs differ beyond the tolerance (all values finite)."""


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


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, example: int, *, minimum: int = 1, hint: str = "") -> int:
    """The one check of an integer argument, with the typed error every fp16cont call raises.

    Args:
        name: The argument's name, as the caller wrote it.
        value: What was passed.
        example: A good value, for the fix.
        minimum: The smallest value allowed (1: a positive integer).
        hint: More of the fix, appended after the example.

    Returns:
        ``value`` as an ``int``.

    Raises:
        InvalidArgumentError: If ``value`` is not an integer >= ``minimum``.

    Example:
        >>> check_int("epochs", 3, example=5)
        3
    """
    if not is_int(value) or value < minimum:  # type: ignore[operator]
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidArgumentError(
            f"Argument `{name}` should be {wanted}. Received: {name}={value!r}. Fix: pass e.g. {name}={example}{hint}."
        )
    return int(value)  # type: ignore[call-overload]


def check_bool(name: str, value: object, fix: str) -> bool:
    """The one check of a True/False argument.

    Args:
        name: The argument's name.
        value: What was passed.
        fix: What to pass instead.

    Returns:
        ``value``.

    Raises:
        InvalidArgumentError: If ``value`` is not a bool.

    Example:
        >>> check_bool("verify", True, "leave it True")
        True
    """
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"Argument `{name}` should be True or False. Received: {value!r}. Fix: {fix}.")
    return value
