"""Load image classification data as float32 images in [0, 1] with a channel axis.

A data set is named (``"digits"``: the 1,797 8x8 handwritten digits shipped
inside the package, no network; ``"cifar10"``, ``"mnist"``: downloaded once
through ``keras.datasets``, which needs the internet the first time) or is a
local ``.npz`` file in the layout of ``keras.datasets``: arrays ``x_train``,
``y_train``, ``x_test`` and ``y_test``.

Images come back as ``float32`` arrays of shape ``(N, H, W, C)`` with values
in [0, 1]: integer pixels are divided by 255, float pixels must already lie
in [0, 1]. Labels come back as ``int32`` arrays of shape ``(N,)``.

Example:
    >>> (x, y), (xt, yt) = load_dataset("digits", limit=100)
    >>> x.shape, x.dtype, y.shape
    ((100, 8, 8, 1), dtype('float32'), (100,))
"""

from __future__ import annotations

import os
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fp16cont.errors import DataError, InvalidSourceError, check_int

__all__ = ["KNOWN_DATASETS", "NPZ_KEYS", "Split", "load_dataset", "load_digits"]

KNOWN_DATASETS: tuple[str, ...] = ("digits", "cifar10", "mnist")
_KERAS_FILES = {  # what keras.datasets downloads, for the offline hint
    "mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}
NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")
Split = tuple[np.ndarray, np.ndarray]


def load_dataset(name_or_path: str | os.PathLike[str], *, limit: int | None = None) -> tuple[Split, Split]:
    """Load a named data set or a local ``.npz`` file as float32 images in [0, 1].

    Args:
        name_or_path: ``"digits"`` (embedded, no network; split 80/20 as in
            :func:`load_digits`), ``"cifar10"`` or ``"mnist"`` (through
            ``keras.datasets``, cached in ``~/.keras/datasets`` after the
            first download), or the
            path of a ``.npz`` file with ``x_train``, ``y_train``, ``x_test``
            and ``y_test`` (as ``keras.datasets`` returns them). An existing
            file takes precedence over a name.
        limit: Keep only the first ``limit`` samples of the training split
            and the first ``limit`` samples of the test split (``None``: all).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 of shape
        ``(N, H, W, C)`` in [0, 1] (a channel axis of 1 is added to
        ``(N, H, W)`` images), ``y`` int32 of shape ``(N,)``.

    Raises:
        InvalidSourceError: If ``name_or_path`` is not a string or path.
        InvalidArgumentError: If ``limit`` is not a positive integer.
        DataError: If the file is missing, not a ``.npz`` archive or lacks a
            key; if the arrays are not images with one integer label each;
            or if a named data set cannot be downloaded.

    Example:
        >>> (x, y), _ = load_dataset("mnist", limit=1000)  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
        (1000, 28, 28, 1)
    """
    count = _check_limit(limit)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidSourceError(
            "Argument `name_or_path` should be a data set name or the path of a .npz file. "
            f"Received: name_or_path of type {type(name_or_path).__name__}. Fix: pass "
            f"one of {', '.join(map(repr, KNOWN_DATASETS))} or e.g. 'data/mnist.npz'."
        )
    path = Path(name_or_path)
    name = str(name_or_path).lower()
    if not path.is_file() and name == "digits":
        (x, y), (xt, yt) = load_digits()
        raw = ((x.reshape(-1, 8, 8), y), (xt.reshape(-1, 8, 8), yt))
        source = "the embedded digits"
    elif not path.is_file() and name in KNOWN_DATASETS:
        raw = _download(name)
        source = f"keras.datasets.{name}"
    else:
        raw = _read_npz(path)
        source = str(path)
    (x, y), (xt, yt) = raw
    return _prepare(x, y, count, source, "train"), _prepare(xt, yt, count, source, "test")


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    return check_int("limit", limit, 1000, hint=" to keep the first 1000 samples of each split, or None for all")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """The embedded 8x8 digits (1,797 real images), scaled to [0, 1] and split train/test.

    Args:
        test_fraction: Share of samples held out for testing.
        seed: Seed of the shuffle before the split.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` with ``x`` float32 of shape
        (n, 64) and ``y`` int32 labels 0..9.

    Example:
        >>> (x, y), (xt, yt) = load_digits()
        >>> x.shape, xt.shape
        ((1437, 64), (360, 64))
    """
    with resources.files("fp16cont").joinpath("data/digits.npz").open("rb") as f:
        data = np.load(f)
        x = data["images"].reshape(-1, 64).astype("float32") / 16.0
        y = data["labels"].astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return (x[train], y[train]), (x[test], y[test])


def _download(name: str) -> tuple[Split, Split]:
    import keras

    try:
        return getattr(keras.datasets, name).load_data()  # type: ignore[no-any-return]
    except Exception as err:  # offline, proxy, truncated cache
        raise DataError(
            f"Cannot download {name!r} ({type(err).__name__}: {str(err).splitlines()[0][-80:]}). Fix: fetch "
            f"{_KERAS_FILES[name]} on a machine with internet"
            + (" and pass its path, e.g. 'mnist.npz' (--data mnist.npz; the keras.datasets layout)" if name == "mnist"
               else ", save it as a .npz with x_train, y_train, x_test, y_test and pass its path")
            + ", or use 'digits' (embedded, no network)."
        ) from err


def _read_npz(path: Path) -> tuple[Split, Split]:
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(
            f"Data set {str(path)!r} is neither a known name ({', '.join(KNOWN_DATASETS)}) nor an "
            f"existing file: the path {where} (relative to {os.getcwd()!r}). Fix: pass "
            f"{' or '.join(map(repr, KNOWN_DATASETS))}, or the path of a .npz file with "
            f"{', '.join(NPZ_KEYS)}."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = tuple(archive.files)
            arrays = {k: archive[k] for k in NPZ_KEYS if k in keys}
    except (AttributeError, OSError, TypeError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(
            f"Cannot read {str(path)!r} as a .npz archive: {type(err).__name__}: {err}. Fix: pass "
            "a file written by np.savez / np.savez_compressed (without pickled objects) with "
            f"{', '.join(NPZ_KEYS)}."
        ) from err
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(
            f"{str(path)!r} lacks the array(s) {', '.join(missing)}; it holds "
            f"{', '.join(keys) or 'no arrays'}. Fix: save it in the keras.datasets layout: "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _prepare(x: Any, y: Any, limit: int | None, source: str, split: str) -> Split:
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise DataError(
            f"{source}: x_{split} has {len(x)} samples but y_{split} has {len(y)}. Fix: store one "
            "label per image."
        )
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return _images(x, source, split), _labels(y, source, split)


def _images(x: np.ndarray, source: str, split: str) -> np.ndarray:
    if x.ndim not in (3, 4) or len(x) == 0:
        raise DataError(
            f"{source}: x_{split} should hold images of shape (N, height, width) or (N, height, "
            f"width, channels) with N >= 1. Received: shape {x.shape}. Fix: store the images, "
            "not flattened vectors, e.g. x.reshape(-1, 28, 28)."
        )
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{source}: integer pixels of x_{split} should lie in [0, 255]. Received: values in "
                f"[{x.min()}, {x.max()}]. Fix: store 8-bit pixels, or floats already scaled to [0, 1]."
            )
        return x.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{source}: x_{split} has dtype {x.dtype}. Fix: store integer or float pixels.")
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise DataError(
            f"{source}: float pixels of x_{split} should be finite and lie in [0, 1]. Received: "
            f"values in [{np.nanmin(x)}, {np.nanmax(x)}]. Fix: scale them before saving (x / 255), "
            "or store the original 8-bit integer pixels."
        )
    return x


def _labels(y: np.ndarray, source: str, split: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.equal(np.mod(y, 1), 0)))
    )
    if y.ndim != 1 or not integral or (y.size and y.min() < 0):
        raise DataError(
            f"{source}: y_{split} should hold one non-negative integer class label per sample, "
            f"shape (N,) or (N, 1). Received: shape {y.shape}, dtype {y.dtype}. Fix: convert "
            "one-hot labels with y.argmax(axis=1)."
        )
    return y.astype(np.int32)
