"""Train with the whole dataset resident on the accelerator (JAX backend only).

Plain ``fit`` slices every batch on the host and copies it to the device, and
runs the jitted step once per ``steps_per_execution`` batches from Python. On
a fast GPU the step is shorter than that feeding, so the GPU waits. On the
JAX backend :func:`device_fit` instead:

- uploads the training arrays to the device once (``jax.device_put``; keep
  images as ``uint8``: a quarter of the bytes of float32);
- gathers each batch by index from the resident arrays and casts and
  normalises it on the device, inside the compiled step;
- runs ``steps_per_execution`` training steps per call as one
  ``jax.lax.scan`` over the model's stateless ``train_step`` (the
  ``stateless_call`` / ``stateless_apply`` step that ``fit`` jits), with the
  state donated, so the host only dispatches one call per chunk.

The semantics are those of ``fit``: the same batch size (a last partial batch
included), a per-epoch permutation drawn from ``shuffle_seed`` (identical for
every model trained with the same seed and data size), the compiled optimizer,
loss and metrics (reset every epoch), and the final state written back into
the Keras variables, so ``model.get_weights()`` and later ``fit`` calls see
the trained values. The optimizer is set up as :func:`~fp16cont.continue_training`
sets it up (Kahan-compensated writes and dynamic loss scaling for pure 16-bit
models).

Example:
    >>> import os; os.environ["KERAS_BACKEND"] = "jax"  # doctest: +SKIP
    >>> history, seconds = device_fit(model16, x_uint8, y, epochs=3)  # doctest: +SKIP
    >>> history["loss"], seconds  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np

from fp16cont.architecture import check_built
from fp16cont.data import check_fit_args, check_fits_model
from fp16cont.errors import DataError, InvalidArgumentError, InvalidSourceError, LossScaleFloorError, TrainingDivergedError
from fp16cont.loss_scale import DynamicLossScale, find_loss_scale
from fp16cont.stagnation import stagnation_report
from fp16cont.train import _loss_name, prepare_optimizer

__all__ = ["device_fit", "DeviceFitResult", "upload", "DEFAULT_STEPS_PER_EXECUTION"]

DEFAULT_STEPS_PER_EXECUTION = 32
_CACHE_ATTRIBUTE = "_fp16cont_device_functions"


class DeviceFitResult(NamedTuple):
    """What :func:`device_fit` returns; unpacks as ``history, epoch_seconds``.

    Attributes:
        history: Per-epoch metric values, as ``fit(...).history``: ``{"loss":
            [...], "accuracy": [...], ...}``, plus ``"loss_scale"`` and
            ``"skipped_steps"`` when the optimizer scales the loss.
        epoch_seconds: Wall seconds of each epoch, measured from the first
            dispatch to the device having finished the epoch's last step. The
            first epoch includes compilation.
    """

    history: dict[str, list[float]]
    epoch_seconds: list[float]


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
    unroll: int = 1,
    verbose: Any = 0,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Sequence[Any] | None = None,
    compensation: Any = "auto",
    slot_dtype: str = "auto",
    seed: int = 0,
    loss_scaling: Any = "auto",
    loss_scale_options: Mapping[str, Any] | None = None,
    nan_guard: bool = True,
    stagnation: bool = False,
    loss_scale_patience: int = 20,
) -> DeviceFitResult:
    """Train ``model`` in place like ``fit``, with the data resident on the device.

    Args:
        model: A built Keras model (e.g. from :func:`~fp16cont.build_fp16_model`).
        x: Inputs: a numpy or JAX array (or a list/dict of them), or the
            result of :func:`upload`. ``uint8`` arrays stay ``uint8`` on the
            device and are divided by 255 per batch on the device.
        y: Targets, likewise.
        epochs: Number of epochs.
        batch_size: Batch size; the last partial batch is trained on, as in ``fit``.
        shuffle: Draw a new permutation of the samples every epoch.
        shuffle_seed: Seed of the permutations (``numpy.random.default_rng``):
            the same seed gives the same batch order for every model.
        steps_per_execution: Training steps per compiled call (a
            ``jax.lax.scan``); the host waits for nothing in between.
        steps_per_epoch: Train on only the first this many batches of each epoch.
        input_scale: Multiply floating inputs (after the cast to float32) by
            this on the device; default 1/255 for ``uint8`` inputs, else none.
        input_offset: Added after ``input_scale``.
        preprocess: A JAX-traceable function applied to each input batch on
            the device instead of the cast and scaling above.
        donate: Donate the training state to the compiled step (no second
            copy of weights and optimizer state on the device).
        unroll: Steps unrolled per iteration of the scan (``jax.lax.scan``'s
            ``unroll``): more room for XLA to overlap steps, longer compiles.
            On CPUs, where XLA runs convolutions inside loops much more
            slowly, prefer ``steps_per_execution=1``.
        verbose: ``0`` silent; otherwise one line per epoch.
        optimizer: As in :func:`~fp16cont.continue_training`: ``None`` keeps
            the compiled optimizer (SGD(0.01) for an uncompiled model).
        loss: A Keras loss; needed for an uncompiled model.
        metrics: Metrics for ``compile``; ``None`` keeps the compiled ones.
        compensation: As in :func:`~fp16cont.continue_training`.
        slot_dtype: As in :func:`~fp16cont.continue_training`.
        seed: Stochastic-rounding seed, as in :func:`~fp16cont.continue_training`.
        loss_scaling: As in :func:`~fp16cont.continue_training`.
        loss_scale_options: As in :func:`~fp16cont.continue_training`.
        nan_guard: At the end of an epoch whose loss is NaN/Inf (unless a loss
            scale skipped those steps and the weights are still finite),
            restore the weights and optimizer state of the epoch's start and
            raise ``TrainingDivergedError``. Checked per epoch, not per step.
        stagnation: As in :func:`~fp16cont.continue_training`: count the
            updates that rounding cancelled each step and log
            ``cancelled_share`` / ``lost_share`` per epoch.
        loss_scale_patience: Raise ``LossScaleFloorError`` when the loss scale
            sat at its floor for this many consecutive skipped steps.

    Returns:
        A :class:`DeviceFitResult` ``(history, epoch_seconds)``.

    Raises:
        InvalidArgumentError: On a backend other than JAX, or for bad arguments.
        InvalidSourceError: If ``model`` is not a Keras model.
        ModelNotBuiltError: If the model was never built.
        MissingLossError: If the model is uncompiled and ``loss`` is ``None``.
        DataError: For empty or mismatched arrays, or data too large for the device.
        TrainingDivergedError: See ``nan_guard``.
        LossScaleFloorError: See ``loss_scale_patience``.

    Example:
        >>> history, seconds = device_fit(model16, x, y, epochs=2, verbose=1)  # doctest: +SKIP
    """
    jax, jnp = _require_jax()
    if not isinstance(model, keras.Model):
        raise InvalidSourceError(
            f"Argument `model` should be a keras.Model. Received: {type(model).__name__}. "
            "Fix: pass the model from build_fp16_model()."
        )
    check_built(model)
    check_fit_args(x if not isinstance(x, _Resident) else x.first, y if not isinstance(y, _Resident) else y.first, batch_size, epochs)
    for name, value in (("steps_per_execution", steps_per_execution), ("steps_per_epoch", steps_per_epoch), ("unroll", unroll)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0):
            raise InvalidArgumentError(
                f"Argument `{name}` should be a positive integer. Received: {name}={value!r}. "
                f"Fix: pass e.g. {name}=32."
            )
    prepare_optimizer(
        model, optimizer, loss, metrics, compensation=compensation, loss_scaling=loss_scaling,
        slot_dtype=slot_dtype, seed=seed, loss_scale_options=loss_scale_options, stagnation=stagnation,
    )
    check_fits_model(model, _host_view(x), _host_view(y), _loss_name(model, loss), None)

    xs = x if isinstance(x, _Resident) else upload(x)
    ys = y if isinstance(y, _Resident) else upload(y)
    n = xs.rows
    if ys.rows != n:
        raise DataError(f"`x` has {n} samples but `y` has {ys.rows}. Fix: pass inputs and targets of the same length.")
    full, remainder = divmod(n, batch_size)
    if steps_per_epoch is not None:
        full, remainder = min(full, int(steps_per_epoch)), (remainder if steps_per_epoch > full else 0)
    spe = max(1, min(int(steps_per_execution), max(full, 1)))
    if preprocess is not None:
        prep, prep_key = preprocess, ("custom", id(preprocess))
    else:
        prep, prep_key = _default_preprocess(xs, input_scale, input_offset)

    _build_training_state(model, xs, ys, batch_size, prep)
    functions = _functions(model, prep, prep_key, donate, int(unroll), jax, jnp)
    scaler = find_loss_scale(model.optimizer)
    rng = np.random.default_rng(shuffle_seed)
    history: dict[str, list[float]] = {}
    epoch_seconds: list[float] = []
    state = _read_state(model)
    restore_point = None
    try:
        for epoch in range(int(epochs)):
            order = rng.permutation(n) if shuffle else np.arange(n)
            order = order.astype(np.int32)
            if nan_guard:
                restore_point = functions.copy(state[:3])
            model.reset_metrics()
            state = (*state[:3], [v.value for v in model.metrics_variables])
            start = time.perf_counter()
            logs = None
            if full:
                batches = jax.device_put(order[: full * batch_size].reshape(full, batch_size))
                whole, tail = divmod(full, spe)
                for chunk in range(whole):
                    state, logs = functions.run(state, xs.arrays, ys.arrays, batches, chunk * spe, spe)
                if tail:
                    state, logs = functions.run(state, xs.arrays, ys.arrays, batches, whole * spe, tail)
            if remainder:
                last = jax.device_put(order[full * batch_size : full * batch_size + remainder].reshape(1, remainder))
                state, logs = functions.run(state, xs.arrays, ys.arrays, last, 0, 1)
            logs = jax.device_get(logs)  # waits for the epoch's last step
            epoch_seconds.append(time.perf_counter() - start)
            _write_state(model, state)
            values = {name: float(np.asarray(value)) for name, value in logs.items()}
            report = stagnation_report(model.optimizer)
            if report is not None:
                values["cancelled_share"] = report.cancelled_share
                values["lost_share"] = report.lost_share
            if scaler is not None:
                values["loss_scale"] = float(np.asarray(scaler.dynamic_scale.value))
                if isinstance(scaler, DynamicLossScale):
                    values["skipped_steps"] = float(np.asarray(scaler.skipped_steps.value))
            for name, value in values.items():
                history.setdefault(name, []).append(value)
            if verbose:
                shown = " - ".join(f"{k}: {v:.4g}" for k, v in values.items())
                print(f"Epoch {epoch + 1}/{epochs} - {epoch_seconds[-1]:.2f}s - {shown}", flush=True)
            state = _read_state(model)
            _check_floor(scaler, epoch, loss_scale_patience)
            if nan_guard and _diverged(model, values, scaler, jnp):
                state = (*restore_point, state[3])
                _write_state(model, state)
                raise TrainingDivergedError(
                    f"Training produced a non-finite loss in epoch {epoch + 1} that no loss scale "
                    "absorbed; the model holds the weights and optimizer state of that epoch's "
                    "start. Fix: lower the learning rate, use precision='bfloat16' (wider range), keep "
                    "unstable layers in float32 (keep_float32=...), or check the data for NaN/Inf."
                )
    finally:
        _write_state(model, state)
    model.optimizer.finalize_variable_values(model.trainable_weights)
    return DeviceFitResult(history, epoch_seconds)


class _Resident:
    """Arrays already on the device (a pytree), with their row count."""

    def __init__(self, arrays: Any, rows: int, integer_uint8: bool, first: Any) -> None:
        self.arrays = arrays
        self.rows = rows
        self.uint8 = integer_uint8
        self.first = first

    def __len__(self) -> int:
        return self.rows


def upload(data: Any) -> _Resident:
    """Copy training arrays to the device once, for repeated :func:`device_fit` calls.

    ``float64`` becomes ``float32`` and ``int64`` becomes ``int32`` on the
    host first (JAX would do the same); everything else keeps its dtype, so
    ``uint8`` images take a quarter of the device memory of float32.

    Args:
        data: A numpy or JAX array, or a list, tuple or dict of them.

    Returns:
        A handle that :func:`device_fit` accepts as ``x`` or ``y``.

    Raises:
        InvalidArgumentError: On a backend other than JAX.
        DataError: For empty or ragged data, or data too large for the device.
    """
    jax, _ = _require_jax()
    if isinstance(data, _Resident):
        return data
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves or any(not hasattr(a, "shape") or len(a.shape) == 0 for a in leaves):
        raise DataError(
            "device_fit needs arrays (numpy or JAX) with one row per sample, or a list/dict of them. "
            f"Received: {type(data).__name__}. Fix: pass x and y as numpy arrays."
        )
    rows = {int(a.shape[0]) for a in leaves}
    if len(rows) != 1:
        raise DataError(f"The arrays have different numbers of rows: {sorted(rows)}. Fix: pass one row per sample in each.")

    def host(a: Any) -> Any:
        if isinstance(a, jax.Array):
            return a
        a = np.asarray(a)
        if a.dtype == np.float64:
            return a.astype(np.float32)
        if a.dtype == np.int64:
            return a.astype(np.int32)
        return a

    prepared = jax.tree_util.tree_map(host, data)
    _check_fits_device(jax, sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(prepared)))
    arrays = jax.device_put(prepared)
    only_uint8 = all(str(a.dtype) == "uint8" for a in jax.tree_util.tree_leaves(arrays))
    first = jax.tree_util.tree_leaves(arrays)[0]
    return _Resident(arrays, rows.pop(), only_uint8, first)


# -- internals ----------------------------------------------------------------
def _host_view(data: Any) -> Any:
    """What the shared data checks can read: the arrays, resident or not."""
    return data.arrays if isinstance(data, _Resident) else data


class _Functions:
    def __init__(self, run: Callable[..., Any], copy: Callable[..., Any]) -> None:
        self.run = run
        self.copy = copy


def _require_jax() -> tuple[Any, Any]:
    backend = keras.backend.backend()
    if backend != "jax":
        raise InvalidArgumentError(
            f"device_fit runs only on Keras' JAX backend; this process uses the {backend!r} backend. "
            "Fix: set KERAS_BACKEND=jax before keras is first imported, or train with "
            "fp16cont.continue_training(), which works on every backend."
        )
    import jax
    import jax.numpy as jnp

    return jax, jnp


def _check_fits_device(jax: Any, nbytes: int) -> None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # some platforms (CPU) report nothing
        stats = {}
    limit = stats.get("bytes_limit")
    if limit and nbytes > 0.5 * limit:
        raise DataError(
            f"The training data takes {nbytes / 2**30:.2f} GiB, more than half of the device's "
            f"{limit / 2**30:.2f} GiB. Fix: keep images as uint8, train on a subset per call, or use "
            "continue_training(), which streams batches from host memory."
        )


def _default_preprocess(xs: _Resident, scale: float | None, offset: float) -> tuple[Callable[[Any], Any], Any]:
    import jax
    import jax.numpy as jnp

    if scale is None:
        scale = 1.0 / 255.0 if xs.uint8 else None
    if scale is None and not offset:
        return _identity, ("identity",)

    def leaf(a: Any) -> Any:
        if not (jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == jnp.uint8):
            return a  # token ids and other integers pass untouched
        out = a.astype(jnp.float32)
        if scale is not None and scale != 1.0:
            out = out * jnp.float32(scale)
        if offset:
            out = out + jnp.float32(offset)
        return out

    return (lambda batch: jax.tree_util.tree_map(leaf, batch)), ("cast", scale, offset)


def _identity(batch: Any) -> Any:
    return batch


def _build_training_state(model: keras.Model, xs: _Resident, ys: _Resident, batch_size: int, prep: Callable[[Any], Any]) -> None:
    """Create the optimizer, metric and loss variables, as ``fit`` does before its first step."""
    import jax

    def spec(a: Any) -> Any:
        return jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype)

    x_spec = jax.eval_shape(prep, jax.tree_util.tree_map(spec, xs.arrays))
    y_spec = jax.tree_util.tree_map(spec, ys.arrays)
    batch = jax.tree_util.tree_map(lambda s: np.zeros((1, *s.shape[1:]), s.dtype), (x_spec, y_spec))
    model._symbolic_build(data_batch=batch)  # what fit runs first; a no-op once built
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _functions(
    model: keras.Model, prep: Callable[[Any], Any], prep_key: Any, donate: bool, unroll: int, jax: Any, jnp: Any
) -> _Functions:
    """The jitted multi-step function, cached on the model until it is recompiled."""
    compiled_with = (
        id(model.optimizer),
        id(getattr(model, "_compile_loss", None)),
        id(getattr(model, "_compile_metrics", None)),
    )
    cache = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None or cache.get("compiled_with") != compiled_with:
        cache = {"compiled_with": compiled_with}  # a recompile drops functions of the old optimizer
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    key = (prep_key, donate, unroll)
    if key in cache:
        return cache[key]

    def steps(state: Any, xs: Any, ys: Any, batches: Any, start: Any, count: int) -> Any:
        indices = jax.lax.dynamic_slice_in_dim(batches, start, count, axis=0)

        def body(carry: Any, index: Any) -> Any:
            xb = prep(jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), xs))
            yb = jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), ys)
            logs, carry = model.train_step(carry, (xb, yb))
            return carry, logs

        if count == 1:  # no loop: XLA:CPU runs convolutions inside loops far slower
            return body(state, indices[0])
        state, logs = jax.lax.scan(body, state, indices, unroll=unroll)
        return state, jax.tree_util.tree_map(lambda v: v[-1], logs)

    compiled = jax.jit(steps, static_argnums=(5,), donate_argnums=(0,) if donate else ())
    copy = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.copy, tree))
    functions = _Functions(compiled, copy)
    cache[key] = functions
    return functions


def _read_state(model: keras.Model) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    return (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )


def _write_state(model: keras.Model, state: Any) -> None:
    groups = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables, model.metrics_variables)
    for variables, values in zip(groups, state):
        for variable, value in zip(variables, values):
            if variable.value is not value:
                variable.assign(value)


def _check_floor(scaler: Any, epoch: int, patience: int) -> None:
    if isinstance(scaler, DynamicLossScale) and int(np.asarray(scaler.floor_hits.value)) >= patience:
        raise LossScaleFloorError(
            f"The loss scale sat at its floor ({scaler.min_scale:g}) for at least {patience} consecutive "
            f"steps with non-finite gradients (epoch {epoch + 1}): training cannot make progress in "
            "float16. Fix: use precision='bfloat16', lower the learning rate, keep the overflowing "
            "layers in float32 (keep_float32=...), or check the data for NaN/Inf."
        )


def _diverged(model: keras.Model, values: dict[str, float], scaler: Any, jnp: Any) -> bool:
    """A non-finite epoch loss with non-finite weights (a loss scale skips overflowing steps)."""
    loss = values.get("loss")
    if loss is None or math.isfinite(loss):
        return False
    weights_finite = all(
        bool(jnp.isfinite(v.value).all()) for v in model.trainable_variables if jnp.issubdtype(v.value.dtype, jnp.floating)
    )
    return not (weights_finite and scaler is not None)
