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

__all__ = ["is_array_like", "check_fit_args", "check_fits_model", "samples_per_epoch", "batch_rows"]


def is_array_like(x: Any) -> bool:
    """Whether ``x`` is a numpy-like array or a list/dict of them (not a dataset)."""
    if isinstance(x, dict):
        return all(is_array_like(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return bool(x) and all(is_array_like(v) for v in x)
    has_dtype = hasattr(x, "dtype") or hasattr(x, "dtypes")  # numpy-like arrays and pandas frames
    return hasattr(x, "shape") and has_dtype and not hasattr(x, "element_spec")


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
        DataError: For empty arrays, inputs and targets of different length, or
            a ``batch_size`` larger than the number of samples.
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
    if batch_size > n:
        raise DataError(
            f"batch_size={batch_size} is larger than the {n} training samples, so every epoch is a "
            f"single partial batch. Fix: pass batch_size <= {n} (the paper uses 128)."
        )


def check_fits_model(model: Any, x: Any, y: Any, loss: Any, validation_data: Any) -> None:
    """Raise :class:`DataError` when array data cannot fit the model or its loss.

    Args:
        model: The built model.
        x: Training inputs.
        y: Training targets.
        loss: The loss (its name is used to check sparse labels), or ``None``.
        validation_data: ``(x, y)`` / ``(x, y, sample_weight)``, a dataset, or ``None``.

    Raises:
        DataError: For inputs of the wrong shape or a non-numeric dtype,
            sparse labels outside ``[0, classes)``, one-hot labels of the
            wrong width, or ``validation_data`` of the wrong structure.
    """
    _check_inputs(model, x, "x")
    _check_labels(model, y, loss, "y")
    if validation_data is None or not (is_array_like(validation_data) or isinstance(validation_data, (list, tuple))):
        return
    if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in (2, 3):
        raise DataError(
            "Argument `validation_data` should be (x_val, y_val), (x_val, y_val, sample_weight) or a "
            f"dataset. Received: a {type(validation_data).__name__} of length "
            f"{len(validation_data) if hasattr(validation_data, '__len__') else '?'}. Fix: pass "
            "validation_data=(x_val, y_val)."
        )
    _check_inputs(model, validation_data[0], "validation x")
    _check_labels(model, validation_data[1], loss, "validation y")


def _check_inputs(model: Any, x: Any, what: str) -> None:
    inputs = getattr(model, "inputs", None)
    if not is_array_like(x) or isinstance(x, (dict, list, tuple)) or not inputs or len(inputs) != 1:
        return
    if not (np.issubdtype(np.asarray(x[:1]).dtype, np.number) or np.asarray(x[:1]).dtype == np.bool_):
        raise DataError(f"`{what}` has dtype {x.dtype}, not a number. Fix: convert it, e.g. x.astype('float32').")
    expected = tuple(inputs[0].shape[1:])
    received = tuple(x.shape[1:])
    if len(expected) != len(received) or any(e is not None and e != r for e, r in zip(expected, received)):
        raise DataError(
            f"`{what}` has samples of shape {received} but model {model.name!r} takes {expected}. "
            "Fix: reshape the data (e.g. add a channel axis with x[..., None]) or use a model built "
            "for this input shape."
        )


def _loss_key(loss: Any) -> str:
    if isinstance(loss, dict):
        loss = loss.get("class_name") or loss.get("config", {}).get("name", "")
    name = loss if isinstance(loss, str) else getattr(loss, "name", None) or getattr(loss, "__name__", "")
    return str(name).replace("_", "").lower()


def _check_labels(model: Any, y: Any, loss: Any, what: str) -> None:
    outputs = getattr(model, "outputs", None)
    name = _loss_key(loss)
    if not is_array_like(y) or isinstance(y, (dict, list, tuple)) or not outputs or len(outputs) != 1:
        return
    classes = outputs[0].shape[-1]
    if "sparsecategorical" in name and classes:
        labels = np.asarray(y)
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(
                f"`{what}` holds class labels from {labels.min()} to {labels.max()}, but the model "
                f"outputs {classes} classes (labels 0..{classes - 1}) for a sparse categorical loss. Fix: pass "
                "integer labels in range, or a model with as many output units as classes."
            )
    elif name == "categoricalcrossentropy" and np.ndim(y) >= 2 and np.shape(y)[-1] != classes:
        raise DataError(
            f"`{what}` is one-hot with {np.shape(y)[-1]} columns but the model outputs {classes}. "
            "Fix: one-hot encode with as many classes as output units, or use "
            "loss='sparse_categorical_crossentropy' with integer labels."
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
    except (StopIteration, IndexError, TypeError, KeyError):
        return batch_size
    inputs = first[0] if isinstance(first, (tuple, list)) else first
    leaf = _first_array(inputs) if isinstance(inputs, (dict, list, tuple)) else inputs
    shape = getattr(leaf, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) and shape[0] is not None else batch_size
