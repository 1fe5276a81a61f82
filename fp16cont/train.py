"""Continue training a (16-bit) Keras model with the paper's defaults.

Example:
    >>> import keras, numpy as np, fp16cont
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> x, y = np.random.rand(64, 4).astype("float32"), np.arange(64) % 3
    >>> r = fp16cont.continue_training(m, x, y, loss="sparse_categorical_crossentropy", verbose=0)
    >>> r.precision
    'float32'
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import keras
import numpy as np

from fp16cont.architecture import check_built
from fp16cont.callbacks import EpochTimer
from fp16cont.data import batch_rows, check_fit_args, is_array_like, samples_per_epoch
from fp16cont.errors import InvalidArgumentError, InvalidSourceError, MissingLossError
from fp16cont.rebuild import float_precision, weight_bytes
from fp16cont.reports import TrainingResult

__all__ = ["continue_training", "DEFAULT_LEARNING_RATE", "resolve_optimizer"]

DEFAULT_LEARNING_RATE = 0.01  # the paper's SGD learning rate
LossScaling = bool | Literal["auto"]


def continue_training(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Sequence[Any] | None = None,
    validation_data: Any = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: Any = "auto",
    loss_scaling: LossScaling = "auto",
    **fit_kwargs: Any,
) -> TrainingResult:
    """Train ``model`` further, like ``model.fit``, and report what happened.

    The model is trained in place. Defaults follow the paper: SGD with
    learning rate 0.01, batch size 128. A compiled model keeps its optimizer
    (and its state), loss and metrics unless they are given here; an
    uncompiled model gets SGD(0.01) and needs ``loss``. Pure float16 models get
    dynamic loss scaling (Keras only gives it to ``mixed_float16``).

    Args:
        model: A built model, typically from :func:`build_fp16_model`.
        x: Inputs: numpy arrays, a ``tf.data.Dataset``, a
            ``keras.utils.PyDataset`` or anything ``fit`` accepts.
        y: Targets for array inputs.
        epochs: Number of epochs.
        batch_size: Batch size for array inputs (datasets keep their own).
        optimizer: A Keras optimizer, its name, or ``None`` (see above).
        loss: A Keras loss or its name; required for an uncompiled model.
        metrics: Metrics for ``compile``; ``None`` keeps the compiled ones.
        validation_data: As in ``fit``.
        callbacks: Any Keras callbacks.
        verbose: As in ``fit`` (Keras' progress bar by default).
        loss_scaling: ``"auto"`` (on for float16 variables), ``True`` or ``False``.
        **fit_kwargs: Passed on to ``model.fit``.

    Returns:
        A :class:`~fp16cont.reports.TrainingResult`.

    Raises:
        InvalidSourceError: If ``model`` is not a Keras model.
        ModelNotBuiltError: If the model was never built.
        InvalidArgumentError: For bad ``epochs``, ``batch_size``, ``optimizer``
            or ``loss_scaling``.
        MissingLossError: If the model is uncompiled and ``loss`` is ``None``.
        DataError: For empty or mismatched arrays.

    Example:
        >>> r = fp16cont.continue_training(m16, x, y, epochs=2)  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
    """
    if not isinstance(model, keras.Model):
        raise InvalidSourceError(
            f"Argument `model` should be a keras.Model. Received: {type(model).__name__}. "
            "Fix: pass the model from build_fp16_model()."
        )
    check_built(model)
    check_fit_args(x, y, batch_size, epochs)
    precision = float_precision(model)
    _compile_for_training(model, optimizer, loss, metrics, _wants_loss_scaling(loss_scaling, precision))
    timer = EpochTimer()
    fit_args: dict[str, Any] = dict(fit_kwargs)
    if is_array_like(x):
        fit_args["batch_size"] = batch_size
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=[*(callbacks or []), timer],
        verbose=verbose,
        **fit_args,
    )
    wall = time.perf_counter() - start
    per_epoch = samples_per_epoch(x, batch_size, fit_kwargs)
    rows = batch_rows(x, batch_size)
    return TrainingResult(
        model=model,
        history=history,
        precision=precision,
        wall_seconds=wall,
        epoch_seconds=tuple(timer.epoch_seconds),
        samples_per_second=tuple(
            (per_epoch if per_epoch is not None else steps * rows) / max(seconds, 1e-9)
            for seconds, steps in zip(timer.epoch_seconds, timer.epoch_steps)
        ),
        weight_bytes=weight_bytes(model.weights),
        optimizer_bytes=weight_bytes(model.optimizer.variables),
        loss_scale=_loss_scale(model.optimizer),
    )


def resolve_optimizer(optimizer: Any) -> keras.optimizers.Optimizer:
    """Turn an optimizer argument into a Keras optimizer.

    Args:
        optimizer: An optimizer instance, a name (``"adam"``), a config dict,
            or ``None`` for the paper's ``SGD(learning_rate=0.01)``.

    Returns:
        The optimizer.

    Raises:
        InvalidArgumentError: If Keras does not know the optimizer.

    Example:
        >>> resolve_optimizer(None).learning_rate.numpy().item()  # doctest: +SKIP
        0.01
    """
    if optimizer is None:
        return keras.optimizers.SGD(learning_rate=DEFAULT_LEARNING_RATE)
    try:
        return keras.optimizers.get(optimizer)
    except (ValueError, TypeError) as err:
        raise InvalidArgumentError(
            f"Argument `optimizer` is not a Keras optimizer. Received: optimizer={optimizer!r} "
            f"({err}). Fix: pass an instance such as keras.optimizers.SGD(0.01) or a name such "
            "as 'sgd' or 'adam'."
        ) from err


def _wants_loss_scaling(loss_scaling: Any, precision: str) -> bool:
    if loss_scaling == "auto":
        return precision in ("float16", "mixed_float16")
    if isinstance(loss_scaling, bool):
        return loss_scaling
    raise InvalidArgumentError(
        f"Argument `loss_scaling` should be 'auto', True or False. Received: {loss_scaling!r}. "
        "Fix: leave it 'auto' (on for float16 models)."
    )


def _compile_for_training(
    model: keras.Model, optimizer: Any, loss: Any, metrics: Any, loss_scaling: bool
) -> None:
    compiled = bool(getattr(model, "compiled", False)) and getattr(model, "optimizer", None) is not None
    current = model.optimizer if compiled else None
    scaled = isinstance(current, keras.optimizers.LossScaleOptimizer)
    if compiled and optimizer is None and loss is None and metrics is None and scaled == loss_scaling:
        return
    previous = _compile_kwargs(model) if compiled else {}
    if loss is None and previous.get("loss") is None:
        raise MissingLossError(
            f"Model {model.name!r} is not compiled with a loss, so there is nothing to train "
            "against. Fix: pass loss=..., e.g. continue_training(model, x, y, "
            "loss='sparse_categorical_crossentropy'), or compile the float32 model first."
        )
    chosen = resolve_optimizer(optimizer) if optimizer is not None or current is None else current
    if isinstance(chosen, keras.optimizers.LossScaleOptimizer) and not loss_scaling:
        chosen = chosen.inner_optimizer
    elif loss_scaling and not isinstance(chosen, keras.optimizers.LossScaleOptimizer):
        chosen = keras.optimizers.LossScaleOptimizer(chosen)
    kwargs = dict(previous)
    kwargs.update(optimizer=chosen)
    if loss is not None:
        kwargs["loss"] = loss
    if metrics is not None:
        kwargs["metrics"] = metrics
    model.compile(**kwargs)


def _compile_kwargs(model: keras.Model) -> dict[str, Any]:
    config = model.get_compile_config()
    if not config:
        return {}
    kwargs = dict(keras.saving.deserialize_keras_object(config))
    kwargs.pop("optimizer", None)
    return kwargs


def _loss_scale(optimizer: Any) -> float | None:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and optimizer.built:
        return float(np.asarray(keras.ops.convert_to_numpy(optimizer.dynamic_scale)))
    return None
