"""Atomic training checkpoints: resume a killed run where it stopped.

Each checkpoint is a complete folder ``epoch-NNNNNN/`` (model weights,
optimizer state with loss scale, Kahan buffers and random state, and a small
JSON file); ``latest.json`` names the newest complete one and is replaced
atomically (write, fsync, rename), so a kill at any moment leaves the
previous checkpoint usable.

Example:
    >>> fp16cont.continue_training(model16, x, y, epochs=10, checkpoint_dir="ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fp16cont.errors import InvalidArgumentError, InvalidSourceError, WeightMismatchError
from fp16cont.numerics import is_low_float, numpy_dtype
from fp16cont.convert.sources import to_numpy

__all__ = ["check_checkpoint_dir", "save_checkpoint", "load_checkpoint", "TrainingCheckpoint", "LATEST"]

LATEST = "latest.json"


def check_checkpoint_dir(directory: Any) -> Path:
    """Check that ``directory`` can hold checkpoints, before anything is trained.

    Args:
        directory: The ``checkpoint_dir`` argument.

    Returns:
        The folder as a ``Path`` (it may not exist yet).

    Raises:
        InvalidArgumentError: If it is not a path, or it (or a parent) is an
            existing file.

    Example:
        >>> check_checkpoint_dir("ckpt").name
        'ckpt'
    """
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
        raise InvalidArgumentError(
            f"Argument `checkpoint_dir` should be a folder path. Received: checkpoint_dir={directory!r}. "
            "Fix: pass e.g. checkpoint_dir='ckpt', or None for no checkpoints."
        )
    root = Path(directory)
    for path in (root, *root.parents):
        if path.exists() and not path.is_dir():
            what = "is an existing file" if path == root else f"lies inside {str(path)!r}, an existing file"
            raise InvalidArgumentError(
                f"Argument `checkpoint_dir` should be a folder, but {str(root)!r} {what}. "
                f"Received: checkpoint_dir={str(directory)!r}. Fix: pass a new or existing folder "
                "(the file is left as it is), e.g. checkpoint_dir='ckpt'."
            )
    return root


def save_checkpoint(model: keras.Model, directory: str | os.PathLike[str], epoch: int, keep: int = 2) -> Path:
    """Write a complete checkpoint of ``model`` after ``epoch`` finished epochs.

    Args:
        model: A compiled model (its optimizer state is saved too).
        directory: The checkpoint folder (created if missing).
        epoch: Number of finished epochs.
        keep: How many complete checkpoints to keep.

    Returns:
        The folder of the new checkpoint.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:06d}"
    staging = root / f".staging-{epoch:06d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model.save_weights(staging / "model.weights.h5")
    _save_optimizer(model, staging / "optimizer.npz")
    _write_json(staging / "state.json", {"epoch": epoch, "model": model.name})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    _write_json(root / LATEST, {"epoch": epoch, "folder": final.name})
    _prune(root, keep)
    return final


def load_checkpoint(model: keras.Model, directory: str | os.PathLike[str]) -> int | None:
    """Restore the newest complete checkpoint into ``model``.

    Args:
        model: The same architecture, compiled the same way as when saved.
        directory: The checkpoint folder.

    Returns:
        The number of finished epochs, or ``None`` when there is no checkpoint.

    Raises:
        InvalidSourceError: If ``latest.json`` names a missing or unreadable folder.
        WeightMismatchError: If the checkpoint does not fit the model or its optimizer.
        InvalidArgumentError: If ``directory`` is an existing file (see
            :func:`check_checkpoint_dir`).
    """
    latest = check_checkpoint_dir(directory) / LATEST
    if not latest.exists():
        return None
    try:
        state = json.loads(latest.read_text())
        folder = Path(directory) / state["folder"]
        weights = folder / "model.weights.h5"
        if not weights.is_file():
            raise OSError(f"{weights} is missing")
    except (OSError, ValueError, KeyError) as err:
        raise InvalidSourceError(
            f"Cannot resume from {str(directory)!r}: {type(err).__name__}: {err}. Fix: pass a complete "
            "checkpoint folder, or a new checkpoint_dir to start afresh."
        ) from err
    try:
        with warnings.catch_warnings():
            # the optimizer's state is restored from optimizer.npz just below
            warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
            model.load_weights(weights)
    except ValueError as err:
        raise WeightMismatchError(
            f"The checkpoint in {str(directory)!r} does not fit model {model.name!r}: {err}. Fix: resume "
            "with the same model and arguments as the run that wrote it, or use a new checkpoint_dir."
        ) from err
    _load_optimizer(model, folder / "optimizer.npz")
    return int(state["epoch"])


class TrainingCheckpoint(keras.callbacks.Callback):
    """Save a checkpoint at the end of every epoch.

    Args:
        directory: The checkpoint folder.
        keep: Complete checkpoints to keep.

    Example:
        >>> TrainingCheckpoint("ckpt").keep
        2
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.keep = keep

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        jax = sys.modules.get("jax") if keras.backend.backend() == "jax" else None
        if jax is None or jax.process_count() == 1:
            save_checkpoint(self.model, self.directory, epoch + 1, self.keep)
            return
        # several JAX processes hold the same replicated state: process 0 writes it, outside the distribution
        # (Keras' saving makes scratch variables, which a multi-process distribution turns into collectives)
        if jax.process_index() == 0:
            distribution = keras.distribution.distribution()
            keras.distribution.set_distribution(None)
            try:
                save_checkpoint(self.model, self.directory, epoch + 1, self.keep)
            finally:
                keras.distribution.set_distribution(distribution)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"fp16cont checkpoint {epoch + 1}")  # all see it before going on


def _save_optimizer(model: keras.Model, path: Path) -> None:
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    values = [to_numpy(v) for v in optimizer.variables] if optimizer else []
    arrays = {f"v{i}": (a.view(np.uint16) if is_low_float(a.dtype) else a) for i, a in enumerate(values)}
    dtypes = np.array([str(a.dtype) for a in values])
    with open(path, "wb") as f:
        np.savez(f, dtypes=dtypes, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _load_optimizer(model: keras.Model, path: Path) -> None:
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    with np.load(path) as data:
        dtypes = [str(d) for d in data["dtypes"]]
        variables = optimizer.variables if optimizer is not None else []
        if len(dtypes) != len(variables):
            raise WeightMismatchError(
                f"The checkpoint holds {len(dtypes)} optimizer variables but the optimizer has "
                f"{len(variables)}. Fix: resume with the same optimizer, compensation and loss "
                "scaling as the run that wrote it, or use a new checkpoint_dir."
            )
        for i, (variable, dtype) in enumerate(zip(variables, dtypes)):
            raw = data[f"v{i}"]
            value = raw.view(numpy_dtype(dtype)) if dtype in ("float16", "bfloat16") else raw
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightMismatchError(
                    f"Optimizer variable {variable.path} has shape {tuple(variable.shape)} but the "
                    f"checkpoint holds {value.shape}. Fix: resume with the same model and optimizer."
                )
            variable.assign(value)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    folders = sorted(p for p in root.glob("epoch-*") if p.is_dir())
    for old in folders[: max(0, len(folders) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
