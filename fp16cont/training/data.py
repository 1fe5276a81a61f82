"""Checks of the data handed to training, and how many samples an epoch sees.

Example:
    >>> import numpy as np
    >>> samples_per_epoch(np.zeros((100, 3)), 32, {"validation_split": 0.2})
    80
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fp16cont.errors import DataError, InvalidArgumentError, check_int, is_int

__all__ = [
    "is_array_like",
    "is_tf_dataset",
    "check_fit_args",
    "check_fit_kwargs",
    "check_fits_model",
    "check_finite",
    "sample_count",
    "smaller_than_batch",
    "partial_batch_notice",
    "samples_per_epoch",
    "batch_rows",
]

_CHUNK_ROWS = 4096  # rows per block of the NaN/Inf scan: bounds its temporary memory
_SHOWN_ROWS = 5  # row indices named in a NaN/Inf error


def is_array_like(x: Any) -> bool:
    """Whether ``x`` is a numpy-like array or a list/dict of them (not a dataset)."""
    if isinstance(x, dict):
        return bool(x) and all(is_array_like(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return bool(x) and all(is_array_like(v) for v in x)
    has_dtype = hasattr(x, "dtype") or hasattr(x, "dtypes")  # numpy-like arrays and pandas frames
    return hasattr(x, "shape") and has_dtype and not hasattr(x, "element_spec")


def is_tf_dataset(x: Any) -> bool:
    """Whether ``x`` is a ``tf.data.Dataset`` (recognised without importing TensorFlow).

    Example:
        >>> is_tf_dataset(np.zeros(3))
        False
    """
    return hasattr(x, "element_spec") and hasattr(x, "as_numpy_iterator")


def _first_array(x: Any) -> Any:
    if isinstance(x, dict):
        return next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        return x[0]
    return x


def check_fit_args(x: Any, y: Any, batch_size: Any, epochs: Any) -> None:
    """Raise a typed error for arguments ``fit`` would reject late or obscurely.

    A ``batch_size`` larger than the number of samples is valid (Keras
    trains on one partial batch per epoch); see :func:`smaller_than_batch`.

    Args:
        x: Training inputs.
        y: Training targets (``None`` for datasets).
        batch_size: Batch size.
        epochs: Number of epochs.

    Raises:
        InvalidArgumentError: For ``epochs`` or ``batch_size`` that are not
            positive integers.
        DataError: For empty arrays, or inputs and targets of different length.

    Example:
        >>> check_fit_args(np.zeros((20, 3)), np.zeros(20), 128, 1)  # 20 < 128 is fine
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise InvalidArgumentError(
                f"Argument `{name}` should be a positive integer. Received: {name}={value!r}. "
                f"Fix: pass e.g. {name}={5 if name == 'epochs' else 128}."
            )
    if x is None:
        raise DataError("Argument `x` is None. Fix: pass training inputs (arrays or a dataset).")
    check_data_type(x, "x")
    if not is_array_like(x):
        return
    n = len(_first_array(x))
    if n == 0:
        raise DataError("The training data is empty (0 samples). Fix: pass at least one sample.")
    if y is None:
        raise DataError("Arrays `x` were given without targets `y`. Fix: pass y=labels (or a dataset of (x, y)).")
    if not is_array_like(y):
        raise DataError(
            f"Argument `y` should hold one target per sample of `x` (an array, or a list/dict of arrays). "
            f"Received: y of type {type(y).__name__}. Fix: pass e.g. y=np.asarray(labels)."
        )
    if len(_first_array(y)) != n:
        raise DataError(
            f"`x` has {n} samples but `y` has {len(_first_array(y))}. Fix: pass inputs and targets "
            "of the same length."
        )


_OWN_ARGUMENTS = frozenset({"x", "y", "epochs", "batch_size", "validation_data", "callbacks", "verbose"})


def check_fit_kwargs(model: Any, x: Any, fit_kwargs: Mapping[str, Any]) -> None:
    """Raise a typed error for ``fit`` arguments passed through that ``fit`` would reject.

    Checked before anything changes (the model is not yet recompiled), with
    the same rules on every backend: the names are ``model.fit``'s;
    ``steps_per_epoch``, ``validation_steps`` and ``validation_batch_size``
    are positive integers or ``None`` (Keras reads ``0`` steps as ``None``);
    ``validation_freq`` a positive integer;
    ``initial_epoch`` a non-negative integer; ``validation_split`` a number in
    [0, 1) that leaves samples on both sides, with array data;
    ``sample_weight`` one weight per sample of array data; ``class_weight``
    a dict from class index to weight.

    Args:
        model: The model to train (its ``fit`` signature names the arguments).
        x: Training inputs (arrays or a dataset).
        fit_kwargs: The other ``fit`` arguments.

    Raises:
        InvalidArgumentError: For an unknown name or a value of the wrong kind.
        DataError: For ``validation_split`` or ``sample_weight`` that do not
            fit the data.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> check_fit_kwargs(m, np.zeros((10, 3)), {"validation_split": 0.2, "shuffle": False})
    """
    known = set(inspect.signature(model.fit).parameters) - _OWN_ARGUMENTS
    for name in fit_kwargs:
        if name not in known:
            raise InvalidArgumentError(
                f"continue_training() got an unexpected keyword argument {name!r}: it passes on the arguments of "
                f"model.fit, which are {sorted(known)}. Fix: check the spelling, or leave the argument out."
            )
    # Keras reads steps_per_epoch=0 and validation_steps=0 as "not set" (a whole pass)
    for name, low, example in (("steps_per_epoch", 0, 10), ("validation_steps", 0, 10), ("validation_batch_size", 1, 32)):
        if fit_kwargs.get(name) is not None:
            check_int(name, fit_kwargs[name], example=example, minimum=low, hint=" or None")
    if fit_kwargs.get("initial_epoch") is not None:
        check_int("initial_epoch", fit_kwargs["initial_epoch"], example=0, minimum=0)
    if "validation_freq" in fit_kwargs:
        check_int("validation_freq", fit_kwargs["validation_freq"], example=2, hint=" (every second epoch)")
    _check_validation_split(x, fit_kwargs.get("validation_split"))
    _check_sample_weight(x, fit_kwargs.get("sample_weight"))
    _check_class_weight(fit_kwargs.get("class_weight"))


def _check_validation_split(x: Any, split: Any) -> None:
    if split is None or (isinstance(split, (int, float, np.number)) and not isinstance(split, bool) and split == 0):
        return
    if isinstance(split, bool) or not isinstance(split, (int, float, np.number)) or not 0 < float(split) < 1:
        raise InvalidArgumentError(
            f"Argument `validation_split` should be a number in [0, 1): the share of the samples held out. "
            f"Received: validation_split={split!r}. Fix: pass e.g. validation_split=0.1."
        )
    if not is_array_like(x):
        raise DataError(
            f"validation_split={split} needs array data; it cannot split a {type(x).__name__}. "
            "Fix: pass validation_data=(x_val, y_val) or a validation dataset instead."
        )
    split_rows(len(_first_array(x)), split)


def training_rows(n: int, validation_split: Any) -> int:
    """The rows Keras trains on under ``validation_split`` (it holds out the last share); ``n`` without one.

    Example:
        >>> training_rows(100, 0.2), training_rows(100, None)
        (80, 100)
    """
    return int(math.floor(n * (1.0 - float(validation_split)))) if validation_split else n


def split_rows(n: int, validation_split: float) -> int:
    """:func:`training_rows`, refusing a split that leaves either side empty.

    Raises:
        DataError: If no row would train or none would validate.

    Example:
        >>> split_rows(10, 0.25)  # floor(10 * 0.75), as Keras splits
        7
    """
    cut = training_rows(n, validation_split)
    if cut in (0, n):
        raise DataError(
            f"validation_split={validation_split} of {n} samples leaves one side empty. Fix: pass more data or another split."
        )
    return cut


def _check_sample_weight(x: Any, sample_weight: Any) -> None:
    if sample_weight is None:
        return
    if not is_array_like(x):
        raise DataError(
            f"Argument `sample_weight` applies to array data only; x is a {type(x).__name__}. Fix: yield "
            "(x, y, sample_weight) from the dataset instead."
        )
    n = len(_first_array(x))
    if isinstance(sample_weight, Mapping):
        parts = list(sample_weight.values())  # one array per output
    elif isinstance(sample_weight, (list, tuple)) and sample_weight and all(hasattr(p, "shape") for p in sample_weight):
        parts = list(sample_weight)
    else:
        parts = [sample_weight]
    for part in parts:
        rows = len(part) if hasattr(part, "__len__") else None
        if rows != n:
            raise DataError(
                f"Argument `sample_weight` should hold one weight per sample: {n}. Received: "
                f"{'a ' + type(part).__name__ if rows is None else f'{rows} weights'}. Fix: pass an array of length {n}."
            )


def _check_class_weight(class_weight: Any) -> None:
    if class_weight is None:
        return
    ok = isinstance(class_weight, Mapping) and all(
        is_int(k) and k >= 0 and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        for k, v in class_weight.items()
    )
    if not ok:
        raise InvalidArgumentError(
            "Argument `class_weight` should be a dict from class index to weight. Received: "
            f"{_short(class_weight)} of type {type(class_weight).__name__}. Fix: pass e.g. class_weight={{0: 1.0, 1: 3.0}}."
        )


def check_data_type(x: Any, what: str, kind: str = "training data") -> None:
    """Raise for values ``fit`` cannot read as data (numbers, text, lists of plain numbers, plain objects).

    Args:
        x: The value given as data.
        what: The argument's name, for the message.
        kind: What the argument should be, for the message.

    Raises:
        DataError: For a value no Keras data adapter reads.

    Example:
        >>> check_data_type(np.zeros((4, 2)), "x")
    """
    scalar = isinstance(x, (str, bytes, int, float, complex, np.generic)) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and len(getattr(x, "shape", ())) == 0
    )
    empty = isinstance(x, (list, tuple, dict)) and not is_array_like(x)  # empty, or holding plain numbers
    readable = is_array_like(x) or hasattr(x, "element_spec") or hasattr(x, "__iter__") or hasattr(x, "__getitem__")
    if scalar or empty or not readable:
        raise DataError(
            f"Argument `{what}` should be {kind}: numpy arrays (or a list/dict of them), a "
            f"tf.data.Dataset, a keras.utils.PyDataset or a generator of (x, y) batches. Received: "
            f"{what}={_short(x)} of type {type(x).__name__}. Fix: convert it, e.g. {what}=np.asarray({what}, "
            "dtype='float32')."
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sample_count(x: Any) -> int | None:
    """Samples in array inputs; ``None`` for datasets and generators.

    Example:
        >>> sample_count({"a": np.zeros((7, 2))})
        7
    """
    return len(_first_array(x)) if is_array_like(x) else None


def smaller_than_batch(x: Any, batch_size: int) -> bool:
    """Whether array inputs hold fewer samples than one batch.

    Such data is valid: like ``fit``, training then runs one partial batch
    of all the samples per epoch.

    Args:
        x: Training inputs.
        batch_size: The batch size for arrays.

    Returns:
        ``True`` for arrays of fewer than ``batch_size`` samples (``False``
        for datasets, which keep their own batches).

    Example:
        >>> smaller_than_batch(np.zeros((20, 3)), 128)
        True
    """
    n = sample_count(x)
    return n is not None and 0 < n < batch_size


def partial_batch_notice(x: Any, batch_size: int) -> str | None:
    """A one-line notice for data smaller than the batch, else ``None``.

    Example:
        >>> partial_batch_notice(np.zeros((20, 3)), 128)
        'fp16cont: 20 training samples < batch_size=128: each epoch is one batch of 20 samples.'
    """
    if not smaller_than_batch(x, batch_size):
        return None
    n = sample_count(x)
    return f"fp16cont: {n} training samples < batch_size={batch_size}: each epoch is one batch of {n} samples."


def check_fits_model(
    model: Any, x: Any, y: Any, loss: Any, validation_data: Any, *, check_finite: bool = True
) -> None:
    """Raise :class:`DataError` when the data cannot fit the model or its loss.

    Args:
        model: The built model.
        x: Training inputs.
        y: Training targets.
        loss: The loss (its name is used to check sparse labels), or ``None``.
        validation_data: ``(x, y)`` / ``(x, y, sample_weight)``, a dataset, or ``None``.
        check_finite: Scan numpy (and pandas) inputs and targets for NaN/Inf
            (one pass over the data, in blocks). ``False`` skips the scan, for
            data that holds NaN on purpose (e.g. a loss that masks it).

    Raises:
        DataError: For inputs of the wrong shape or a non-numeric dtype,
            labels that are not numbers, sparse labels outside ``[0, classes)``
            or one-hot encoded, one-hot labels of the wrong width, an
            unbatched ``tf.data.Dataset``, NaN/Inf in array data, or
            ``validation_data`` of the wrong structure.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> check_fits_model(m, np.zeros((4, 3)), np.zeros(4), "mse", None)
    """
    _check_batched(model, x, "x")
    _check_inputs(model, x, "x")
    if is_array_like(y) and not isinstance(y, (dict, list, tuple)):
        _check_numeric_labels(y, "y")
    if check_finite:
        _check_finite_data(x, "x")
        _check_finite_data(y, "y")
    _check_labels(model, y, loss, "y")
    if validation_data is None:
        return
    if hasattr(validation_data, "element_spec"):
        _check_batched(model, validation_data, "validation_data")
        return
    if not (is_array_like(validation_data) or isinstance(validation_data, (list, tuple, dict, str, bytes))) and (
        hasattr(validation_data, "__iter__") or hasattr(validation_data, "__getitem__")
    ):
        return  # a PyDataset or generator: Keras reads it
    if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in (2, 3):
        raise DataError(
            "Argument `validation_data` should be (x_val, y_val), (x_val, y_val, sample_weight) or a "
            f"dataset. Received: {_short(validation_data)} of type {type(validation_data).__name__}. Fix: pass "
            "validation_data=(x_val, y_val)."
        )
    _check_validation_lengths(validation_data)
    _check_inputs(model, validation_data[0], "validation x")
    if is_array_like(validation_data[1]) and not isinstance(validation_data[1], (dict, list, tuple)):
        _check_numeric_labels(validation_data[1], "validation y")
    if check_finite:
        _check_finite_data(validation_data[0], "validation x")
        _check_finite_data(validation_data[1], "validation y")
    _check_labels(model, validation_data[1], loss, "validation y")


def _check_validation_lengths(validation_data: tuple[Any, ...] | list[Any]) -> None:
    """``(x_val, y_val[, sample_weight])`` of arrays: one row each per sample."""
    parts = [p for p in validation_data if p is not None]
    if not all(is_array_like(p) for p in parts):
        return
    rows = [len(_first_array(p)) for p in parts]
    if len(set(rows)) > 1:
        names = ("x_val", "y_val", "sample_weight")[: len(rows)]
        raise DataError(
            "The parts of `validation_data` should have one row per sample each. Received: "
            + ", ".join(f"{name} with {r}" for name, r in zip(names, rows))
            + ". Fix: pass arrays of the same length."
        )


def check_finite(x: Any, what: str = "x") -> None:
    """Raise :class:`DataError` if numpy/pandas data holds NaN or Inf.

    Names how many samples (rows) hold a non-finite value and the first of
    them. Other kinds of data (datasets, tensors, generators) are not read.

    Args:
        x: An array, a pandas object, or a list/dict of them.
        what: How the message names the data (``"x"``, ``"validation y"``).

    Raises:
        DataError: If any row holds NaN or Inf.

    Example:
        >>> try:
        ...     check_finite(np.array([[0.0, 1.0], [np.nan, 2.0]]))
        ... except DataError as err:
        ...     print(str(err)[:47])
        `x` holds NaN or Inf in 1 of 2 samples (rows 1)
    """
    _check_finite_data(x, what)


def _check_finite_data(data: Any, what: str) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _check_finite_data(value, f"{what}[{key!r}]")
        return
    if isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            _check_finite_data(value, f"{what}[{i}]")
        return
    array = _host_array(data)
    if array is None or array.ndim == 0 or len(array) == 0:
        return
    bad = _nonfinite_rows(array)
    if bad is None:
        return
    rows, first = bad
    n = len(array)
    where = f"all {n} samples" if rows == n else f"{rows} of {n} samples"
    shown = ", ".join(map(str, first)) + (", ..." if rows > len(first) else "")
    raise DataError(
        f"`{what}` holds NaN or Inf in {where} (rows {shown}): every training step that sees them "
        "gives a non-finite loss. "
        f"Fix: drop or impute those rows, e.g. keep = np.isfinite({_array_name(what)}).reshape(len({_array_name(what)}), -1)"
        f".all(axis=1); {_pair(what)} = {_pair(what, '[keep]')}; or pass check_finite=False if the NaN/Inf values are intended "
        "(e.g. a loss that masks them)."
    )


def _array_name(what: str) -> str:
    """The variable a message's fix names: ``y`` for targets, ``x`` otherwise (``"validation y"`` -> ``y_val``)."""
    name = "y" if what.split("[")[0].split()[-1] == "y" else "x"
    return f"{name}_val" if what.startswith("validation") else name


def _pair(what: str, index: str = "") -> str:
    """``x, y`` (or ``x_val, y_val``), each followed by ``index``."""
    suffix = "_val" if what.startswith("validation") else ""
    return f"x{suffix}{index}, y{suffix}{index}"


def _host_array(data: Any) -> np.ndarray | None:
    """A numpy view of numpy or pandas data with floating values; ``None`` for anything else."""
    if hasattr(data, "to_numpy") and hasattr(data, "dtypes"):  # pandas: only all-float frames are scanned
        try:
            data = data.to_numpy()
        except (TypeError, ValueError):
            return None
    if not isinstance(data, np.ndarray):
        return None
    kind = data.dtype.kind
    if kind in "fc" or (kind == "V" and data.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")):
        return data
    return None


def _nonfinite_rows(array: np.ndarray) -> tuple[int, list[int]] | None:
    """(rows holding NaN/Inf, the first few of them), or ``None`` when all is finite."""
    count, first = 0, []
    for start in range(0, len(array), _CHUNK_ROWS):
        block = array[start : start + _CHUNK_ROWS]
        with np.errstate(all="ignore"):
            if block.dtype.kind == "f" and np.isfinite(np.add.reduce(block, axis=None, dtype=np.float64)):
                continue  # a finite sum means every value is finite (NaN and Inf propagate)
        bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
        hits = np.flatnonzero(bad)
        count += int(hits.size)
        first.extend(int(start + i) for i in hits[: max(0, _SHOWN_ROWS - len(first))])
    return (count, first) if count else None


def _check_batched(model: Any, x: Any, what: str) -> None:
    """Raise for a ``tf.data.Dataset`` whose elements are single samples, not batches."""
    spec = getattr(x, "element_spec", None)
    inputs = getattr(model, "inputs", None)
    if spec is None or not inputs or len(inputs) != 1:
        return
    first = spec[0] if isinstance(spec, (tuple, list)) and spec else spec
    shape = getattr(first, "shape", None)
    if shape is None or getattr(shape, "rank", len(shape) if hasattr(shape, "__len__") else None) is None:
        return
    element = tuple(shape)
    expected = tuple(inputs[0].shape)
    sample = expected[1:]
    if len(element) != len(sample) or (sample and sample[-1] == 1):
        return  # batched (or a rank Keras adapts by itself)
    if any(e is not None and r is not None and e != r for e, r in zip(sample, element)):
        return
    raise DataError(
        f"Argument `{what}` is a tf.data.Dataset of single samples (element shape {element}), but "
        f"model {getattr(model, 'name', '?')!r} takes batches of shape {expected}. Fix: batch it, "
        "e.g. dataset.batch(128), before passing it (the batch_size argument applies to arrays only)."
    )


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
    if not is_array_like(y) or isinstance(y, (dict, list, tuple)):
        return
    _check_numeric_labels(y, what)
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return
    name = _loss_key(loss)
    output_shape = tuple(outputs[0].shape)
    classes = output_shape[-1] if output_shape else None
    if "sparsecategorical" in name and classes:
        if np.ndim(y) == len(output_shape) and np.shape(y)[-1] == classes and classes > 1:
            raise DataError(
                f"`{what}` looks one-hot encoded (shape {np.shape(y)}, {classes} columns) but the loss "
                f"{_loss_label(loss)} takes integer class labels of shape {np.shape(y)[:-1]}. Fix: pass "
                f"y.argmax(axis=-1), or use loss='categorical_crossentropy' with one-hot labels."
            )
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


def _check_numeric_labels(y: Any, what: str) -> None:
    values = y.to_numpy() if hasattr(y, "to_numpy") and hasattr(y, "dtypes") else y
    dtype = getattr(values, "dtype", None)
    if dtype is None or not isinstance(dtype, np.dtype):
        return  # tensors of the backends are numeric
    textual = dtype.kind in "US" or (
        dtype.kind == "O" and len(values) and isinstance(np.asarray(values).flat[0], (str, bytes))
    )
    if textual:
        sample = ", ".join(repr(str(v)) for v in list(np.unique(np.asarray(values[:50]).astype(str)))[:3])
        raise DataError(
            f"`{what}` holds text ({sample}, ...), not numbers. Fix: map the class names to integers, "
            "e.g. classes, y = np.unique(y, return_inverse=True), and train with "
            "loss='sparse_categorical_crossentropy'."
        )


def _loss_label(loss: Any) -> str:
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, dict):
        return repr(loss.get("class_name") or loss.get("config", {}).get("name", "?"))
    return type(loss).__name__ if not callable(loss) or hasattr(loss, "get_config") else getattr(loss, "__name__", "?")


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
    n = training_rows(len(_first_array(x)), fit_kwargs.get("validation_split"))
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
