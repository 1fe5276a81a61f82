"""``device_fit``: the resident mode of the training engine, under its earlier name.

:func:`~fp16cont.continue_training` already runs this mode by itself on
Keras' JAX backend when the training arrays fit on the device (see
:mod:`fp16cont.training.engine`). ``device_fit`` is a thin alias that forces it, keeps
its own defaults (``uint8`` images divided by 255 on the device, no progress
bar) and returns ``(history, epoch_seconds)``. The guard, loss-scale floor,
callbacks and checkpoints are those of ``continue_training``.

Example:
    >>> import os; os.environ["KERAS_BACKEND"] = "jax"  # doctest: +SKIP
    >>> history, seconds = device_fit(model16, x_uint8, y, epochs=3)  # doctest: +SKIP
    >>> history["loss"], seconds  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from fp16cont.training.engine import Engine, Resident, upload
from fp16cont.errors import UnsupportedBackendError
from fp16cont.reporting.results import DeviceFitResult

__all__ = ["device_fit", "DeviceFitResult", "upload", "DEFAULT_STEPS_PER_EXECUTION"]

DEFAULT_STEPS_PER_EXECUTION = 32


def device_fit(
    model: keras.Model,
    x: Any,
    y: Any,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    shuffle: bool = True,
    shuffle_seed: int = 0,
    steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION,
    steps_per_epoch: int | None = None,
    input_scale: float | None = None,
    input_offset: float = 0.0,
    preprocess: Callable[[Any], Any] | None = None,
    donate: bool = True,
    verbose: Any = 0,
    **training_kwargs: Any,
) -> DeviceFitResult:
    """Train ``model`` in place with the data resident on the device (JAX backend).

    Equivalent to ``continue_training(model, x, y, engine=Engine("resident",
    ...))`` with ``uint8`` inputs scaled by 1/255 unless ``input_scale`` says
    otherwise.

    Args:
        model: A built Keras model (e.g. from :func:`~fp16cont.build_fp16_model`).
        x: Inputs: arrays (or a list/dict of them), or the result of :func:`upload`.
        y: Targets, likewise.
        epochs: Number of epochs.
        batch_size: Batch size; the last partial batch is trained on, as in ``fit``.
        shuffle: Draw a new permutation every epoch.
        shuffle_seed: Seed of the permutations (see :class:`~fp16cont.training.engine.Engine`).
        steps_per_execution: Training steps per compiled call.
        steps_per_epoch: Train on only the first this many batches of each epoch.
        input_scale: Multiply inputs by this on the device; default 1/255 for
            ``uint8`` inputs, else none.
        input_offset: Added after ``input_scale``.
        preprocess: A JAX-traceable function applied to each input batch on the device.
        donate: Donate the training state to the compiled step.
        verbose: As in ``fit`` (silent by default).
        **training_kwargs: Any other :func:`~fp16cont.continue_training`
            argument (``optimizer``, ``loss``, ``metrics``, ``compensation``,
            ``callbacks``, ``validation_data``, ``checkpoint_dir``, ...).

    Returns:
        A :class:`DeviceFitResult` ``(history, epoch_seconds)``.

    Raises:
        UnsupportedBackendError: On a backend other than JAX.
        InvalidArgumentError: For bad arguments.
        Fp16ContError: Whatever :func:`~fp16cont.continue_training` raises.

    Example:
        >>> history, seconds = device_fit(model16, x, y, epochs=2, verbose=1)  # doctest: +SKIP
    """
    from fp16cont.training.train import continue_training

    if keras.backend.backend() != "jax":
        raise UnsupportedBackendError(
            f"device_fit runs only on Keras' JAX backend; this process uses the {keras.backend.backend()!r} backend. "
            "Fix: set KERAS_BACKEND=jax before keras is first imported, or train with "
            "fp16cont.continue_training(), which works on every backend."
        )
    if input_scale is None and preprocess is None and _all_uint8(x):
        input_scale = 1.0 / 255.0
    engine = Engine(
        "resident", steps_per_execution=steps_per_execution, donate=donate,
        input_scale=input_scale, input_offset=input_offset, preprocess=preprocess, shuffle_seed=shuffle_seed,
    )
    fit_kwargs: dict[str, Any] = {"shuffle": shuffle}
    if steps_per_epoch is not None:
        fit_kwargs["steps_per_epoch"] = steps_per_epoch
    result = continue_training(
        model, x, y, epochs=epochs, batch_size=batch_size, verbose=verbose, engine=engine,
        **fit_kwargs, **training_kwargs,
    )
    return DeviceFitResult(dict(result.history.history), list(result.epoch_seconds))


def _all_uint8(x: Any) -> bool:
    if isinstance(x, Resident):
        return x.uint8
    import jax

    leaves = jax.tree_util.tree_leaves(x)
    return bool(leaves) and all(str(getattr(a, "dtype", "")) == "uint8" for a in leaves)
