"""Read a model or its weights from what the user hands over.

A source is a ``keras.Model``, a path to a ``.keras`` / ``.h5`` model file,
a path to a ``.weights.h5`` file (with the model whose architecture it fits),
or a list / dict of numpy arrays.

Example:
    >>> import numpy as np
    >>> read_weights({"w": np.zeros(2, np.float32)}).paths
    ('w',)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import keras
import numpy as np

from fp16cont.convert.architecture import check_built, clone_with_policies
from fp16cont.errors import AlreadyLowPrecisionError, InvalidSourceError, SourceFileNotFoundError, WeightMismatchError
from fp16cont.numerics import is_low_float

__all__ = ["Source", "WeightSource", "load_model", "read_weights", "variable_arrays", "to_numpy", "check_float32_source"]

Source = Union[keras.Model, str, os.PathLike, Sequence[np.ndarray], Mapping[str, np.ndarray]]
_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class WeightSource:
    """Weights read from a source, in the model's weight order.

    Attributes:
        paths: The variable paths (list indices / dict keys for raw arrays).
        arrays: The values, as numpy arrays.
        model: The model they belong to, when the source had one.
    """

    paths: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    model: keras.Model | None = None


def to_numpy(variable: Any) -> np.ndarray:
    """A host copy of a Keras variable's value (also for distributed variables).

    Args:
        variable: A Keras variable.

    Returns:
        A new numpy array.
    """
    return np.array(variable.numpy())


def check_float32_source(paths: Sequence[str], dtypes: Sequence[Any], what: str, fix: str) -> None:
    """The one "already 16-bit" check: raise if any floating-point value is 16-bit.

    Args:
        paths: Variable paths (or list indices / dict keys).
        dtypes: Their dtypes, in the same order.
        what: What holds them, for the message (``"Model 'mlp'"``, ``"The weights"``).
        fix: What to pass instead.

    Raises:
        AlreadyLowPrecisionError: Naming up to five 16-bit variables and the fix.

    Example:
        >>> check_float32_source(["w"], ["float32"], "The weights", "pass float32 weights")
    """
    low = [f"{p} ({getattr(d, 'name', d)})" for p, d in zip(paths, dtypes) if is_low_float(d)]
    if low:
        raise AlreadyLowPrecisionError(
            f"{what} already has {len(low)} 16-bit variable(s), e.g. {', '.join(low[:5])}; fp16cont starts "
            f"from float32. Fix: {fix}"
        )


def variable_arrays(model: keras.Model) -> tuple[np.ndarray, ...]:
    """The values of ``model.weights`` as numpy arrays (copies, never views).

    Args:
        model: A built Keras model.

    Returns:
        One array per variable, in ``model.weights`` order.
    """
    return tuple(to_numpy(v) for v in model.weights)


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` / ``.h5`` model file without compiling surprises.

    Args:
        path: The file to load.

    Returns:
        The loaded model (compiled when the file holds a compile config).

    Raises:
        SourceFileNotFoundError: If there is no file at ``path``.
        InvalidSourceError: If the path is a directory, of the wrong kind,
            or not a readable model.

    Example:
        >>> load_model("missing.keras")  # doctest: +SKIP
    """
    file = _existing_file(path)
    if not file.name.endswith(_MODEL_SUFFIXES) or file.name.endswith(".weights.h5"):
        raise InvalidSourceError(
            f"Cannot load a model from {str(file)!r}: expected a .keras or .h5 model file. "
            "Fix: save the model with model.save('model.keras'), or pass a .weights.h5 "
            "file together with model=<the architecture>."
        )
    try:
        return keras.saving.load_model(file)
    except Exception as err:  # corrupt, truncated or foreign files
        raise InvalidSourceError(
            f"Cannot load a model from {str(file)!r}: {type(err).__name__}: {err}. Fix: check "
            "that the file is a complete model saved by Keras 3 (model.save) and that custom "
            "layers are registered with @keras.saving.register_keras_serializable()."
        ) from err


def read_weights(source: Any, model: keras.Model | None = None) -> WeightSource:
    """Read the floating-point weights of any supported source.

    Args:
        source: A ``keras.Model``; a path to a ``.keras`` / ``.h5`` model file;
            a path to a ``.weights.h5`` file (``model`` required); or a list /
            dict of numpy arrays.
        model: The architecture for a ``.weights.h5`` file; never modified
            (the weights are loaded into a clone).

    Returns:
        A :class:`WeightSource`.

    Raises:
        SourceFileNotFoundError: If a path source names no file.
        InvalidSourceError: If the source is of an unsupported type or unreadable.
        ModelNotBuiltError: If a model source was never built.
        WeightMismatchError: If a weights file does not fit ``model``.
    """
    if isinstance(source, keras.Model):
        check_built(source)
        return WeightSource(tuple(v.path for v in source.weights), variable_arrays(source), source)
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, model)
    if isinstance(source, Mapping):
        return WeightSource(tuple(str(k) for k in source), tuple(_as_array(v, k) for k, v in source.items()))
    if isinstance(source, (list, tuple)):
        return WeightSource(tuple(str(i) for i in range(len(source))), tuple(_as_array(v, i) for i, v in enumerate(source)))
    raise InvalidSourceError(
        f"Argument `source` should be a keras.Model, a path to a .keras/.h5/.weights.h5 file, "
        f"or a list/dict of numpy arrays. Received: source of type {type(source).__name__}. "
        "Fix: pass the model itself, e.g. quantize_weights(model)."
    )


def _read_path(path: str | os.PathLike[str], model: keras.Model | None) -> WeightSource:
    file = _existing_file(path)
    if not file.name.endswith(".weights.h5"):
        loaded = load_model(file)
        return WeightSource(tuple(v.path for v in loaded.weights), variable_arrays(loaded), loaded)
    if not isinstance(model, keras.Model):
        raise InvalidSourceError(
            f"{str(file)!r} holds weights only. Fix: pass the architecture too, e.g. "
            "quantize_weights(path, model=build_model())."
        )
    clone = clone_with_policies(model, lambda layer: None)
    try:
        clone.load_weights(file)
    except Exception as err:  # wrong architecture or corrupt file
        raise WeightMismatchError(
            f"Cannot load {str(file)!r} into model {model.name!r}: {type(err).__name__}: {err}. "
            "Fix: pass the model whose architecture saved these weights."
        ) from err
    return WeightSource(tuple(v.path for v in clone.weights), variable_arrays(clone), clone)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    if not file.exists():
        raise SourceFileNotFoundError(f"No file at {str(file)!r}. Fix: check the path (relative to {os.getcwd()!r}).")
    if not file.is_file():
        raise InvalidSourceError(f"{str(file)!r} is a directory, not a model file. Fix: pass the .keras file inside it.")
    return file


def _as_array(value: Any, key: object) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value  # read only: never written to
    try:
        return np.array(keras.ops.convert_to_numpy(value))
    except Exception as err:
        raise InvalidSourceError(
            f"Weight {key!r} is a {type(value).__name__}, not an array. Fix: pass numpy arrays, "
            "e.g. model.get_weights()."
        ) from err
