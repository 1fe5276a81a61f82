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

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import keras
import numpy as np

from fp16cont.convert.architecture import check_built, compile_config
from fp16cont.training.callbacks import EpochTimer, LossScaleLogger
from fp16cont.optim.carry import carry_optimizer_state, innermost_optimizer, made_from, private_copy
from fp16cont.training.checkpoint import TrainingCheckpoint, load_checkpoint
from fp16cont.optim.compensation import COMPENSATIONS, CompensatedOptimizer, Compensation, SlotDtype, default_compensation, find_compensated
from fp16cont.training.guard import NonFiniteGuard
from fp16cont.optim.loss_scale import DynamicLossScale, LossScaleMonitor, find_loss_scale
from fp16cont.numerics import is_low_float
from fp16cont.reporting.stagnation import StagnationMonitor
from fp16cont.training.data import (
    batch_rows, check_fit_args, check_fit_kwargs, check_fits_model, is_array_like, is_tf_dataset, sample_count, samples_per_epoch,
    training_rows,
)
from fp16cont.training.engine import Engine, Resident, as_engine, choose_engine, fit_with_engine, tuned_convolutions
from fp16cont.training.tf_engine import fit_compiled, progress_callbacks
from fp16cont.errors import InvalidArgumentError, InvalidSourceError, MissingLossError
from fp16cont.convert.rebuild import float_precision, weight_bytes
from fp16cont.convert.lora import prepare_lora
from fp16cont.convert.sources import to_numpy
from fp16cont.reporting.results import TrainingResult

__all__ = ["continue_training", "DEFAULT_LEARNING_RATE", "resolve_optimizer", "OptimizerPlan", "prepare_optimizer"]

DEFAULT_LEARNING_RATE = 0.01  # the paper's SGD learning rate
LossScaling = Union[bool, Literal["auto"]]
CompensationArg = Union[Compensation, Literal["auto"], None]


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
    compensation: CompensationArg = "auto",
    slot_dtype: SlotDtype = "auto",
    seed: int = 0,
    loss_scaling: LossScaling = "auto",
    loss_scale_options: dict[str, Any] | None = None,
    nan_guard: bool | int | NonFiniteGuard = True,
    stagnation: bool = False,
    initial_optimizer_state: keras.Model | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    engine: str | Engine = "auto",
    check_finite: bool = True,
    lora_precision: str = "auto",
    recalibrate_batchnorm: bool | int = False,
    **fit_kwargs: Any,
) -> TrainingResult:
    """Train ``model`` further, like ``model.fit``, and report what happened.

    The model is trained in place. Defaults follow the paper: SGD with
    learning rate 0.01, batch size 128. A compiled model keeps its optimizer
    (and its state), loss and metrics unless they are given here; an
    uncompiled model gets SGD(0.01) and needs ``loss``.

    For pure 16-bit models the optimizer is wrapped so that training is as
    accurate as float32 while every stored tensor stays 16-bit: update
    arithmetic in float32 with stochastically rounded writes (``compensation``),
    and dynamic loss scaling for float16 (Keras only gives it to
    ``mixed_float16``). A :class:`~fp16cont.training.guard.NonFiniteGuard` rolls back
    NaN/Inf steps.

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
        compensation: ``"auto"`` (``"stochastic"`` rounding for pure 16-bit
            models, chosen by measurement: float32 accuracy at half the bytes;
            off otherwise), ``"kahan"`` (a 16-bit error buffer per weight),
            ``"stochastic"``, ``"none"``
            (float32 arithmetic, plain rounding) or ``None`` (the optimizer as
            Keras runs it).
        slot_dtype: ``"auto"`` (optimizer slots in the variable dtype) or
            ``"float32"``.
        seed: Seed of stochastic rounding.
        loss_scaling: ``"auto"`` (on when compute is float16), ``True`` or ``False``.
        loss_scale_options: Keyword arguments of
            :class:`~fp16cont.optim.loss_scale.DynamicLossScale` (``initial_scale``,
            ``dynamic_growth_steps``, ``min_scale``, ``max_scale``).
        nan_guard: ``True`` (3 rollbacks allowed), a number of rollbacks, a
            configured :class:`~fp16cont.training.guard.NonFiniteGuard`, or ``False``.
        stagnation: Count the updates that rounding cancelled each step and
            log ``cancelled_share`` / ``lost_share`` per epoch (costs three
            reductions per variable and step; needs compensation).
        initial_optimizer_state: The float32 source model whose optimizer
            state (momentum, moments, iteration count) to start from.
        checkpoint_dir: Save the model and optimizer state (loss scale, Kahan
            buffers and random state included) there after every epoch,
            atomically; a rerun with the same arguments resumes after the
            last finished epoch.
        engine: How the steps run: ``"auto"`` (default) picks the fastest
            correct mode: on Keras' JAX backend the training data is kept
            resident on the device (arrays that fit) or streamed to it
            with prefetch (larger arrays, ``tf.data``, ``PyDataset``), and
            ``steps_per_execution`` steps run per compiled call; on
            TensorFlow (``"compiled"``) Keras' ``fit`` runs 32 steps (8 on
            CPUs) per ``tf.function`` call on ``tf.data``-staged inputs; on
            torch, Keras' ``fit``. ``"fit"`` forces Keras' own ``fit``;
            ``"resident"`` / ``"streamed"`` / ``"compiled"`` force a mode; an
            :class:`~fp16cont.training.engine.Engine` sets its options. Batch-level
            callbacks fire once per compiled call.
        check_finite: Scan array inputs and targets for NaN/Inf before
            training and raise ``DataError`` naming the rows; ``False`` for
            data that holds NaN on purpose.
        lora_precision: For models with LoRA enabled (``backbone.enable_lora(r)``,
            before or after :func:`build_fp16_model`): ``"auto"`` trains the
            adapters in their layer's dtype (16-bit in a pure 16-bit model, with
            ``compensation``: pure LoRA); ``"float32"`` keeps float32 adapters on
            the frozen 16-bit layers (mixed-precision LoRA). Only the adapters of
            the LoRA layers train (their biases are frozen); the result's
            ``lora`` says what trains in which dtype.
        **fit_kwargs: Further ``fit`` arguments (``shuffle``,
            ``class_weight``, ``sample_weight``, ``validation_split``,
            ``steps_per_epoch``, ...); any the engine does not handle itself
            make it use Keras' ``fit``.
        recalibrate_batchnorm: After training, set the moving mean and
            variance of every trainable BatchNormalization layer to the
            population statistics of the final weights over a random subset
            of the training data (:func:`~fp16cont.training.batchnorm.recalibrate_batchnorm`):
            ``True`` for 20 batches, or the number of batches. Off by default
            (``fit`` does not do it). The moving statistics lag fast-moving
            weights; at SGD 0.01 on MNIST this recovered 0.7 pp of test
            accuracy for bfloat16 and float32 alike (``benchmarks/RESULTS.md``).
            Array inputs and re-readable datasets (``tf.data``, ``PyDataset``)
            only; the result's ``batchnorm`` says what was done. History's
            validation figures are from before it.

    Returns:
        A :class:`~fp16cont.reporting.results.TrainingResult`.

    Raises:
        InvalidSourceError: If ``model`` is not a Keras model.
        ModelNotBuiltError: If the model was never built.
        InvalidArgumentError: For bad ``epochs``, ``batch_size``, ``optimizer``,
            ``compensation``, ``loss_scaling``, ``engine`` or optimizer-state
            arguments, and for ``fit`` arguments passed through that ``fit``
            does not take or would reject (unknown names, negative step counts,
            ``validation_split`` outside [0, 1), a ``class_weight`` that is
            not a dict).
        MissingLossError: If the model is uncompiled and ``loss`` is ``None``.
        DataError: For empty or mismatched arrays (``sample_weight`` and
            ``validation_data`` included).
        LossScaleFloorError: If float16 loss scaling cannot find a working scale.
        TrainingDivergedError: If NaN/Inf persists after ``nan_guard`` rollbacks.

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
    _check_training_args(loss, metrics, callbacks, loss_scale_options, stagnation, compensation, loss_scaling)
    recalibration_steps = _recalibration_steps(recalibrate_batchnorm)
    view_x, view_y = (d.arrays if isinstance(d, Resident) else d for d in (x, y))  # what the checks can read
    check_fit_args(view_x, view_y, batch_size, epochs)
    check_fit_kwargs(model, view_x, fit_kwargs)
    for name in ("steps_per_epoch", "validation_steps"):
        if fit_kwargs.get(name) == 0:
            fit_kwargs[name] = None  # as Keras reads it (a whole pass), in every engine mode
    options = as_engine(engine)
    lora = prepare_lora(model, lora_precision)  # the adapters' dtype, before the optimizer sees them
    precision = float_precision(model)
    check_fits_model(model, view_x, view_y, _loss_name(model, loss), validation_data, check_finite=check_finite)  # before the model is recompiled
    plan = prepare_optimizer(
        model, optimizer, loss, metrics, compensation=compensation, loss_scaling=loss_scaling,
        slot_dtype=slot_dtype, seed=seed, loss_scale_options=loss_scale_options, stagnation=stagnation,
    )
    state_report = carry_optimizer_state(initial_optimizer_state, model) if initial_optimizer_state is not None else None
    resumed = load_checkpoint(model, checkpoint_dir) if checkpoint_dir is not None else None
    choice = choose_engine(options, x, fit_kwargs, model)
    timer = EpochTimer()
    stagnation_monitor = StagnationMonitor()
    monitors: list[keras.callbacks.Callback] = [timer, stagnation_monitor] if stagnation else [timer]
    guard = _guard(nan_guard)
    if guard is not None:
        monitors.append(guard)
    if plan.loss_scaling:
        monitors.extend([LossScaleMonitor(check_every=_hook_multiple(50, choice.steps_per_execution)), LossScaleLogger()])
    if checkpoint_dir is not None:
        monitors.append(TrainingCheckpoint(checkpoint_dir))
    fit_args: dict[str, Any] = dict(fit_kwargs)
    if resumed is not None:
        fit_args["initial_epoch"] = min(resumed, epochs)
        if resumed >= epochs:
            warnings.warn(
                f"The checkpoint in {str(checkpoint_dir)!r} already holds {resumed} epoch(s) >= epochs={epochs}: "
                "nothing is left to train. Pass a new checkpoint_dir (or more epochs) to train further.",
                stacklevel=2,
            )
    start = time.perf_counter()
    if choice.mode in ("fit", "compiled"):
        if is_array_like(x):
            fit_args["batch_size"] = batch_size
        else:
            fit_args.setdefault("shuffle", False)  # datasets bring their own order; Keras would warn

        given = [*(callbacks or []), *monitors]
        if choice.mode == "compiled":
            given += progress_callbacks(given, verbose)  # Keras' own bar counts a short last call past the end

        def keras_fit() -> keras.callbacks.History:
            return model.fit(
                x, y, epochs=epochs, validation_data=validation_data, callbacks=given, verbose=verbose, **fit_args,
            )

        with tuned_convolutions(choice):
            history = keras_fit() if choice.mode == "fit" else fit_compiled(model, choice.steps_per_execution, keras_fit)
    else:
        history = fit_with_engine(
            model, x, y, choice=choice, engine=options, epochs=epochs, batch_size=batch_size,
            validation_data=validation_data, callbacks=[*(callbacks or []), *monitors], verbose=verbose,
            fit_kwargs=fit_args,
        )
    wall = time.perf_counter() - start
    batchnorm = (
        _recalibrate(model, view_x, batch_size, recalibration_steps, seed, fit_kwargs.get("validation_split"))
        if recalibration_steps else None
    )
    per_epoch = samples_per_epoch(view_x, batch_size, fit_kwargs)
    rows = batch_rows(view_x, batch_size)
    scaler = find_loss_scale(model.optimizer)
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
        parameters=sum(int(np.prod(v.shape)) for v in model.trainable_weights),
        compensation=plan.compensation,
        loss_scale=_loss_scale(scaler),
        skipped_steps=_read_int(getattr(scaler, "skipped_steps", None)),
        rollbacks=guard.rollbacks if guard is not None else 0,
        guard_events=tuple(guard.events) if guard is not None else (),
        stagnation=stagnation_monitor.reports[-1] if stagnation_monitor.reports else None,
        optimizer_state=state_report,
        initial_epoch=fit_args.get("initial_epoch", 0),
        engine=choice.mode,
        engine_reason=choice.reason,
        lora=lora.describe() if lora is not None else None,
        batchnorm=batchnorm,
        sixteen_bit_share=_sixteen_bit_share(model),
        epoch_logs=tuple(timer.epoch_logs),
    )


def _sixteen_bit_share(model: keras.Model) -> float | None:
    """The share of trainable values stored in float16 or bfloat16 (``None`` without trainable weights)."""
    sizes = [(int(np.prod(v.shape)), is_low_float(v.dtype)) for v in model.trainable_weights]
    total = sum(n for n, _ in sizes)
    return sum(n for n, low in sizes if low) / total if total else None


DEFAULT_RECALIBRATION_BATCHES = 20  # measured as good as 100 on MNIST (benchmarks/RESULTS.md)


def _recalibration_steps(value: Any) -> int:
    """Batches of BatchNorm recalibration asked for (0: none)."""
    if isinstance(value, (bool, np.bool_)):
        return DEFAULT_RECALIBRATION_BATCHES if value else 0
    if isinstance(value, (int, np.integer)) and value > 0:
        return int(value)
    raise InvalidArgumentError(
        f"Argument `recalibrate_batchnorm` should be True, False or a positive number of batches. Received: "
        f"recalibrate_batchnorm={value!r}. Fix: pass True ({DEFAULT_RECALIBRATION_BATCHES} batches) or e.g. 50."
    )


def _recalibrate(model: keras.Model, x: Any, batch_size: int, steps: int, seed: int, validation_split: Any = None) -> Any:
    """Recalibrate BatchNorm statistics on ``steps`` random batches of ``x`` (arrays) or the first ``steps`` (datasets).

    With ``validation_split``, only the training rows (Keras holds out the last share) are drawn from.
    """
    from fp16cont.training.batchnorm import batchnorm_layers, recalibrate_batchnorm

    if not batchnorm_layers(model):
        return None
    if is_array_like(x):
        rows = training_rows(sample_count(x), validation_split)
        take = min(rows, steps * batch_size)
        index = np.sort(np.random.default_rng([seed, 0xB4]).choice(rows, take, replace=False))
        subset = keras.tree.map_structure(lambda a: np.asarray(a)[index], x)
        return recalibrate_batchnorm(model, subset, batch_size=batch_size)
    if is_tf_dataset(x) or isinstance(x, keras.utils.PyDataset):  # both can be read again
        return recalibrate_batchnorm(model, x, steps=steps)
    warnings.warn(
        f"recalibrate_batchnorm: {type(x).__name__} inputs cannot be read a second time, so the BatchNormalization "
        "statistics were left as training set them. Fix: call fp16cont.recalibrate_batchnorm(model, x) with fresh "
        "batches of training data.",
        stacklevel=3,
    )
    return None


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
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InvalidArgumentError(
            f"Argument `optimizer` is not a Keras optimizer. Received: optimizer={optimizer!r} "
            f"({err}). Fix: pass an instance such as keras.optimizers.SGD(0.01) or a name such "
            "as 'sgd' or 'adam'."
        ) from err


@dataclass(frozen=True)
class OptimizerPlan:
    """The optimizer wrappers a training run needs.

    Attributes:
        compensation: The compensation mode, or ``None`` for none.
        loss_scaling: Whether to wrap in :class:`DynamicLossScale`.
        slot_dtype: Optimizer slot dtype.
        seed: Stochastic-rounding seed.
        loss_scale_options: Keyword arguments of :class:`DynamicLossScale`.
        track_updates: Count cancelled and lost updates each step.
    """

    compensation: str | None
    loss_scaling: bool
    slot_dtype: str = "auto"
    seed: int = 0
    loss_scale_options: dict[str, Any] = field(default_factory=dict)
    track_updates: bool = False

    def matches(self, optimizer: Any) -> bool:
        """Whether a compiled optimizer chain already is what this plan builds."""
        compensated = find_compensated(optimizer)
        same_compensation = (compensated is None and self.compensation is None) or (
            compensated is not None
            and (compensated.compensation, compensated.slot_dtype, compensated.seed, compensated.track_updates)
            == (self.compensation, self.slot_dtype, self.seed, self.track_updates)
        )
        scaler = find_loss_scale(optimizer)
        wanted_scaler = isinstance(scaler, DynamicLossScale) if self.loss_scaling else scaler is None
        if not wanted_scaler:
            return False
        return same_compensation and all(
            getattr(scaler, key, None) == value for key, value in self.loss_scale_options.items()
        )

    def wrap(self, base: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        """Wrap ``base`` as planned."""
        optimizer: keras.optimizers.Optimizer = base
        if self.compensation is not None:
            optimizer = CompensatedOptimizer(
                optimizer, self.compensation, seed=self.seed, slot_dtype=self.slot_dtype, track_updates=self.track_updates
            )
        if self.loss_scaling:
            optimizer = DynamicLossScale(optimizer, **self.loss_scale_options)
        return optimizer


def prepare_optimizer(
    model: keras.Model,
    optimizer: Any,
    loss: Any,
    metrics: Any,
    *,
    compensation: CompensationArg = "auto",
    loss_scaling: LossScaling = "auto",
    slot_dtype: SlotDtype = "auto",
    seed: int = 0,
    loss_scale_options: dict[str, Any] | None = None,
    stagnation: bool = False,
) -> OptimizerPlan:
    """Compile ``model`` with the optimizer chain its precision needs (if not already).

    Shared by :func:`continue_training` and :func:`fp16cont.training.device_loop.device_fit`;
    the arguments mean what they mean there.

    Returns:
        The :class:`OptimizerPlan` the model is now compiled with.

    Raises:
        InvalidArgumentError: For bad ``compensation``, ``loss_scaling`` or
            ``loss_scale_options``, or an unknown optimizer.
        MissingLossError: If the model is uncompiled and ``loss`` is ``None``.
    """
    precision = float_precision(model)
    plan = OptimizerPlan(
        compensation=_resolve_compensation(compensation, precision),
        loss_scaling=_wants_loss_scaling(loss_scaling, precision),
        slot_dtype=slot_dtype,
        seed=seed,
        loss_scale_options=dict(loss_scale_options or {}),
        track_updates=bool(stagnation),
    )
    if plan.loss_scaling and plan.loss_scale_options:
        DynamicLossScale(keras.optimizers.SGD(), **plan.loss_scale_options)  # checks them before anything runs
    _compile_for_training(model, optimizer, loss, metrics, plan)
    return plan


def _check_training_args(loss: Any, metrics: Any, callbacks: Any, loss_scale_options: Any, stagnation: Any,
                         compensation: Any, loss_scaling: Any) -> None:
    """Typed errors for arguments Keras would reject late, or after the model was recompiled."""
    def bad(name: str, value: Any, expected: str, fix: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"Argument `{name}` should be {expected}. Received: {name}={value!r}. Fix: {fix}.")

    if loss is not None and not _known(loss, keras.losses.get):
        raise bad("loss", loss, "a Keras loss, its name, or a list/dict of them", "e.g. loss='sparse_categorical_crossentropy'")
    if metrics is not None and (not isinstance(metrics, (list, tuple, dict))
                                or not all(_known(m, keras.metrics.get) for m in _leaves(metrics))):
        raise bad("metrics", metrics, "a list (or dict) of Keras metrics or their names", "e.g. metrics=['accuracy']")
    if callbacks is not None and (not isinstance(callbacks, (list, tuple))
                                  or not all(isinstance(c, keras.callbacks.Callback) for c in callbacks)):
        raise bad("callbacks", callbacks, "a list of keras.callbacks.Callback instances", "e.g. callbacks=[keras.callbacks.EarlyStopping()]")
    if loss_scale_options is not None and not isinstance(loss_scale_options, dict):
        raise bad("loss_scale_options", loss_scale_options, "a dict of DynamicLossScale arguments", "e.g. loss_scale_options={'initial_scale': 2.0**15}")
    if not isinstance(stagnation, bool):
        raise bad("stagnation", stagnation, "True or False", "leave it False")
    if not (compensation is None or isinstance(compensation, str)):
        raise bad("compensation", compensation, "'auto', 'kahan', 'stochastic', 'none' or None", "leave it 'auto'")
    if not isinstance(loss_scaling, (bool, str)):
        raise bad("loss_scaling", loss_scaling, "'auto', True or False", "leave it 'auto'")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _known(value: Any, get: Any) -> bool:
    """Whether Keras resolves ``value`` (a name, an object, or a list/dict of them) with ``get``."""
    if isinstance(value, (list, tuple, dict)):
        leaves = [v for v in _leaves(value) if v is not None]  # None: an output without a loss
        return bool(leaves) and all(_known(v, get) for v in leaves)
    if isinstance(value, str):
        try:
            return get(value) is not None
        except (ValueError, TypeError, KeyError):
            return False
    return callable(value)


def _resolve_compensation(compensation: Any, precision: str) -> str | None:
    if compensation == "auto":
        return default_compensation(precision)
    if compensation is None or compensation in COMPENSATIONS:
        return compensation
    raise InvalidArgumentError(
        f"Argument `compensation` should be 'auto', 'kahan', 'stochastic', 'none' or None. "
        f"Received: compensation={compensation!r}. Fix: leave it 'auto'."
    )


def _wants_loss_scaling(loss_scaling: Any, precision: str) -> bool:
    if loss_scaling == "auto":
        return precision in ("float16", "mixed_float16")
    if isinstance(loss_scaling, bool):
        return loss_scaling
    raise InvalidArgumentError(
        f"Argument `loss_scaling` should be 'auto', True or False. Received: {loss_scaling!r}. "
        "Fix: leave it 'auto' (on for float16 models)."
    )


def _compile_for_training(model: keras.Model, optimizer: Any, loss: Any, metrics: Any, plan: OptimizerPlan) -> None:
    compiled = bool(getattr(model, "compiled", False)) and getattr(model, "optimizer", None) is not None
    current = model.optimizer if compiled else None
    if compiled and optimizer is None and loss is None and metrics is None and plan.matches(current):
        return
    previous = _compile_kwargs(model) if compiled else {}
    if loss is None and previous.get("loss") is None:
        raise MissingLossError(
            f"Model {model.name!r} is not compiled with a loss, so there is nothing to train "
            "against. Fix: pass loss=..., e.g. continue_training(model, x, y, "
            "loss='sparse_categorical_crossentropy'), or compile the float32 model first."
        )
    kwargs = dict(previous)
    keep = current is not None and plan.matches(current) and (optimizer is None or made_from(current, optimizer))
    # the same optimizer chain keeps its state (moments, Kahan buffers, loss scale) across a recompile
    kwargs["optimizer"] = current if keep else plan.wrap(_base_optimizer(optimizer, current))
    if loss is not None:
        kwargs["loss"] = loss
    if metrics is not None:
        kwargs["metrics"] = metrics
    model.compile(**kwargs)


def _base_optimizer(optimizer: Any, current: Any) -> keras.optimizers.Optimizer:
    if optimizer is not None:
        base = resolve_optimizer(optimizer)
    elif current is None:
        return resolve_optimizer(None)
    else:
        base = current
    if find_compensated(base) is not None or isinstance(base, keras.optimizers.LossScaleOptimizer):
        inner = innermost_optimizer(base)
        return private_copy(inner)  # a fresh copy from its config (schedules included)
    return base


def _compile_kwargs(model: keras.Model) -> dict[str, Any]:
    config = compile_config(model)
    if not config:
        return {}
    kwargs = dict(keras.saving.deserialize_keras_object(config))
    kwargs.pop("optimizer", None)
    return kwargs


def _loss_scale(scaler: Any) -> float | None:
    if scaler is not None and scaler.built:
        return float(to_numpy(scaler.dynamic_scale))
    return None


def _hook_multiple(steps: int, steps_per_execution: int) -> int:
    """The smallest multiple of ``steps_per_execution`` that is at least ``steps``.

    Batch hooks begin at multiples of ``steps_per_execution``: a callback
    that looks at ``batch % n == 0`` then looks about every ``steps`` steps.
    """
    spe = max(1, int(steps_per_execution))
    return spe * max(1, -(-int(steps) // spe))


def _guard(nan_guard: Any) -> NonFiniteGuard | None:
    # the guard looks at the first batch hook at or after every 10th step, whatever steps_per_execution is
    check_every = 10
    if isinstance(nan_guard, NonFiniteGuard):
        return nan_guard
    if nan_guard is False or nan_guard is None:
        return None
    if nan_guard is True:
        return NonFiniteGuard(check_every=check_every)
    if isinstance(nan_guard, int) and not isinstance(nan_guard, bool) and nan_guard > 0:
        return NonFiniteGuard(max_failures=nan_guard, check_every=check_every)
    raise InvalidArgumentError(
        f"Argument `nan_guard` should be True, False, a positive number of rollbacks or a NonFiniteGuard. "
        f"Received: nan_guard={nan_guard!r}. Fix: leave it True (3 rollbacks)."
    )


def _loss_name(model: keras.Model, loss: Any) -> Any:
    if loss is not None:
        return loss
    return compile_config(model).get("loss")


def _read_int(variable: Any) -> int:
    return 0 if variable is None else int(to_numpy(variable))
