"""Checks of the data handed to training, and how many samples an epoch sees.

Example:
    >>> import numpy as np
    >>> samples_per_epoch(np.zeros((100, 3)), 32, {"validation_split": 0.2})
    80
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fp16cont.errors import DataError, InvalidArgumentError

__all__ = ["is_array_like", "check_fit_args", "samples_per_epoch"]


def is_array_like(x: Any) -> bool:
    """Whether ``x`` is a numpy-like array or a list/dict of them (not a dataset)."""
    if isinstance(x, dict):
        return all(is_array_like(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return bool(x) and all(is_array_like(v) for v in x)
    return hasattr(x, "shape") and hasattr(x, "dtype") and not hasattr(x, "element_spec")


def _first_array(x: Any) -> Any:
    if isinstance(x, dict):
        return next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        return x[0]
    return x


def check_fit_args(x: Any, y: Any, batch_size: Any, epochs: Any) -> None:
    """Raise a typed error for arguments ``fit`` would reject late or obscurely.

    Args:
        x: Training inputs.
        y: Training targets (``None`` for datasets).
        batch_size: Batch size.
        epochs: Number of epochs.

    Raises:
        InvalidArgumentError: For ``epochs`` or ``batch_size`` that are not
            positive integers.
        DataError: For empty arrays, or inputs and targets of different length.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise InvalidArgumentError(
                f"Argument `{name}` should be a positive integer. Received: {name}={value!r}. "
                f"Fix: pass e.g. {name}={5 if name == 'epochs' else 128}."
            )
    if x is None:
        raise DataError("Argument `x` is None. Fix: pass training inputs (arrays or a dataset).")
    if not is_array_like(x):
        return
    n = len(_first_array(x))
    if n == 0:
        raise DataError("The training data is empty (0 samples). Fix: pass at least one batch of samples.")
    if y is None:
        raise DataError("Arrays `x` were given without targets `y`. Fix: pass y=labels (or a dataset of (x, y)).")
    if is_array_like(y) and len(_first_array(y)) != n:
        raise DataError(
            f"`x` has {n} samples but `y` has {len(_first_array(y))}. Fix: pass inputs and targets "
            "of the same length."
        )


def samples_per_epoch(x: Any, batch_size: int, fit_kwargs: dict[str, Any]) -> int | None:
    """Training samples per epoch, exactly for arrays; ``None`` when unknown.

    Args:
        x: Training inputs.
        batch_size: Batch size used for arrays.
        fit_kwargs: The other ``fit`` arguments (``validation_split``,
            ``steps_per_epoch``).

    Returns:
        The sample count, or ``None`` for datasets and generators.
    """
    if not is_array_like(x):
        return None
    n = len(_first_array(x))
    split = float(fit_kwargs.get("validation_split") or 0.0)
    n = int(math.floor(n * (1.0 - split))) if split else n
    steps = fit_kwargs.get("steps_per_epoch")
    return min(n, int(steps) * batch_size) if steps else n
