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

__all__ = ["is_array_like", "check_fit_args", "samples_per_epoch", "batch_rows"]


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


def batch_rows(x: Any, batch_size: int) -> int:
    """Rows per training batch: ``batch_size`` for arrays, else the first batch's.

    Args:
        x: Training inputs: arrays, a ``tf.data.Dataset``, a ``PyDataset`` or
            any iterable of ``(x, y)`` batches.
        batch_size: The batch size used for arrays.

    Returns:
        The rows of one batch (``batch_size`` when they cannot be seen
        without consuming a one-shot iterator).
    """
    if is_array_like(x):
        return batch_size
    try:
        if hasattr(x, "element_spec"):  # a tf.data.Dataset: iterating it is repeatable
            first = next(iter(x))
        elif hasattr(x, "__getitem__") and hasattr(x, "__len__"):  # PyDataset / Sequence
            first = x[0]
        else:
            return batch_size
    except (StopIteration, IndexError, TypeError):
        return batch_size
    inputs = first[0] if isinstance(first, (tuple, list)) else first
    leaf = _first_array(inputs) if isinstance(inputs, (dict, list, tuple)) else inputs
    shape = getattr(leaf, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) and shape[0] is not None else batch_size
