"""Compensated 16-bit updates: a wrapper around any Keras optimizer.

With round-to-nearest, ``w + dw == w`` whenever ``|w| > 2048 |dw|`` in
float16 (256 in bfloat16), so small continued-training updates vanish.
:class:`CompensatedOptimizer` wraps any Keras optimizer and, for 16-bit
variables, runs the inner optimizer's update arithmetic in float32 on a
float32 view of the weight, then writes the result back to 16-bit storage:

- ``"kahan"``: a 16-bit error buffer per weight keeps what rounding dropped
  and adds it back on the next update (2 extra bytes per parameter);
- ``"stochastic"``: bfloat16 weights are rounded up or down at random, in
  proportion to the distance (unbiased in expectation; no extra memory);
- ``"none"``: round-to-nearest, as plain 16-bit training, but with float32
  arithmetic (bias correction, epsilon) and the stagnation counters.

Every write also counts, per variable, the updates that rounding cancelled
(``dw != 0`` but ``w`` unchanged) and the ones lost outright (not kept in the
buffer either), which :mod:`fp16cont.stagnation` reports.

Only the public ``keras.ops`` API is used, so the wrapper runs on every Keras
backend.

Example:
    >>> import keras
    >>> opt = CompensatedOptimizer(keras.optimizers.SGD(0.01), "kahan")
    >>> opt.compensation
    'kahan'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import keras
from keras import ops

from fp16cont.errors import InvalidArgumentError
from fp16cont.numerics import facts, is_low_float

__all__ = ["Compensation", "SlotDtype", "CompensatedOptimizer", "find_compensated", "COMPENSATIONS"]

Compensation = Literal["kahan", "stochastic", "none"]
SlotDtype = Literal["auto", "float32"]
COMPENSATIONS: tuple[str, ...] = ("kahan", "stochastic", "none")


@keras.saving.register_keras_serializable(package="fp16cont")
class CompensatedOptimizer(keras.optimizers.Optimizer):
    """Wrap a Keras optimizer so 16-bit weights do not lose small updates.

    Args:
        inner_optimizer: Any Keras optimizer (SGD with or without momentum,
            Adam, AdamW, RMSprop, ...). Its hyper-parameters and slots are
            its own; only the arithmetic on 16-bit variables moves to float32.
        compensation: ``"kahan"``, ``"stochastic"`` (bfloat16 weights only) or
            ``"none"``.
        seed: Seed of the stochastic rounding, for reproducible runs.
        slot_dtype: ``"auto"`` keeps optimizer slots (momentum, Adam moments)
            in the variable's 16-bit dtype; ``"float32"`` keeps them in float32.
        track_updates: Count, every step, the updates that rounding cancelled
            or lost (for :mod:`fp16cont.stagnation`); costs three reductions
            per variable and step, so it is off unless asked for.
        name: Optimizer name.

    Raises:
        InvalidArgumentError: For an unknown ``compensation`` or ``slot_dtype``,
            or an inner object that is not a Keras optimizer.

    Example:
        >>> model.compile(CompensatedOptimizer(keras.optimizers.Adam(1e-4)), "mse")  # doctest: +SKIP
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        compensation: Compensation = "kahan",
        *,
        seed: int = 0,
        slot_dtype: SlotDtype = "auto",
        track_updates: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise InvalidArgumentError(
                f"Argument `inner_optimizer` should be a Keras optimizer. Received: "
                f"{type(inner_optimizer).__name__}. Fix: CompensatedOptimizer(keras.optimizers.SGD(0.01))."
            )
        if compensation not in COMPENSATIONS:
            raise InvalidArgumentError(
                f"Argument `compensation` should be one of {COMPENSATIONS}. Received: "
                f"compensation={compensation!r}. Fix: compensation='kahan' works for every 16-bit format."
            )
        if slot_dtype not in ("auto", "float32"):
            raise InvalidArgumentError(
                f"Argument `slot_dtype` should be 'auto' or 'float32'. Received: {slot_dtype!r}. "
                "Fix: slot_dtype='float32' keeps optimizer moments in float32."
            )
        super().__init__(learning_rate=0.0, name=name or f"compensated_{inner_optimizer.name}", **kwargs)
        self.inner_optimizer = inner_optimizer
        self.compensation = compensation
        self.seed = seed
        self.slot_dtype = slot_dtype
        self.track_updates = bool(track_updates)
        self.fuse_updates = True
        self._fused: Callable[..., Any] | None = None
        self._fused_ids: list[int] = []
        self.adjustments: list[str] = []
        self._proxies = _ProxyTable()  # not a dict: Keras would track the variables put in it
        self._instrument(inner_optimizer)

    # -- building ---------------------------------------------------------
    def build(self, var_list: Sequence[Any]) -> None:
        """Create the buffers and counters, then build the inner optimizer."""
        low = [is_low_float(v.dtype) for v in var_list]
        if self.compensation == "stochastic":
            bad = [v.path for v, is_low in zip(var_list, low) if is_low and str(v.dtype) != "bfloat16"]
            if bad:
                raise InvalidArgumentError(
                    f"compensation='stochastic' rounds bfloat16 weights; {len(bad)} variable(s) are "
                    f"{var_list[low.index(True)].dtype}, e.g. {bad[0]}. Fix: use compensation='kahan' "
                    "for float16 models."
                )
        self._buffers = [
            self.add_variable_from_reference(v, name="kahan") if is_low and self.compensation == "kahan" else None
            for v, is_low in zip(var_list, low)
        ]
        tracked = [is_low and self.track_updates for is_low in low]
        self._intended = [self._counter(v, "intended") if t else None for v, t in zip(var_list, tracked)]
        self._cancelled = [self._counter(v, "cancelled") if t else None for v, t in zip(var_list, tracked)]
        self._lost = [self._counter(v, "lost") if t else None for v, t in zip(var_list, tracked)]
        self._seed_generator = keras.random.SeedGenerator(self.seed) if self.compensation == "stochastic" else None
        if self.slot_dtype == "float32" and self.inner_optimizer.built:
            self.adjustments.append(
                "slot_dtype='float32' not applied: the inner optimizer was already built, so its slots keep "
                "their dtype; wrap an unbuilt optimizer to choose it"
            )
        self._make_epsilon_safe(var_list)
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._low = low
        self._paths = [v.path for v in var_list]

    def _counter(self, variable: Any, kind: str) -> Any:
        return self.add_variable(shape=(), dtype="float32", initializer="zeros", name=f"{variable.path.replace('/', '_')}_{kind}")

    @property
    def variables(self) -> list[Any]:
        own = list(self._variables)
        if getattr(self, "_seed_generator", None) is not None:
            own.append(self._seed_generator.state)
        return own + list(self.inner_optimizer.variables)

    # -- delegation -------------------------------------------------------
    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self.inner_optimizer.learning_rate = value

    @property
    def iterations(self) -> Any:
        return self.inner_optimizer.iterations

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        """Apply gradients through the inner optimizer with compensated writes."""
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        # One gradient dtype: the updates run in float32 anyway, and a
        # distributed all-reduce cannot pack float32 and 16-bit tensors together.
        grads = [g if g is None else ops.cast(_dense(g), "float32") for g in grads]
        fused = self._fused_apply(trainable_variables)
        if fused is not None:
            fused(grads)
        else:
            self.inner_optimizer.apply(grads, trainable_variables)

    def _fused_apply(self, trainable_variables: Sequence[Any] | None) -> Callable[..., Any] | None:
        """On TensorFlow, the update as one XLA-fused function (``None`` elsewhere).

        The variables are captured, not passed: they are the same every step.
        """
        if keras.backend.backend() != "tensorflow" or not self.fuse_updates:
            return None
        from fp16cont import _tensorflow

        if not _tensorflow.single_device():
            return None
        variables = list(trainable_variables or self._trainable_variables)
        if self._fused is None or [id(v) for v in variables] != self._fused_ids:
            self._fused_ids = [id(v) for v in variables]
            self._fused = _tensorflow.xla_function(lambda grads: self.inner_optimizer.apply(grads, variables))
        return self._fused

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    def scale_loss(self, loss: Any) -> Any:
        return self.inner_optimizer.scale_loss(loss)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "compensation": self.compensation,
            "seed": self.seed,
            "slot_dtype": self.slot_dtype,
            "track_updates": self.track_updates,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> CompensatedOptimizer:
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)

    # -- statistics -------------------------------------------------------
    def update_counts(self) -> list[tuple[str, int, int, int]]:
        """Per trainable variable: ``(path, intended, cancelled, lost)`` of the last step.

        ``intended``: values whose float32 update was non-zero; ``cancelled``:
        of those, values whose 16-bit weight did not change; ``lost``: values
        whose update is kept nowhere (neither weight nor Kahan buffer).

        Returns:
            One tuple per variable the optimizer was built with.
        """
        if not self.built:
            return []
        read = lambda v: 0 if v is None else int(round(float(v.numpy())))  # noqa: E731
        return [
            (p, read(i), read(c), read(lo))
            for p, i, c, lo in zip(self._paths, self._intended, self._cancelled, self._lost)
        ]

    # -- the compensated write -------------------------------------------
    def _index(self, variable: Any) -> int:
        return int(self._original_index(variable))

    def _proxy(self, variable: Any) -> Any:
        value = ops.cast(variable, "float32")
        buffer = self._buffers[self._index(variable)]
        if buffer is not None:
            value = ops.add(value, ops.cast(buffer, "float32"))
        return value

    def _write(self, variable: Any, before: Any, target: Any) -> None:
        """Store float32 ``target`` into 16-bit ``variable``; ``before`` is its float32 view."""
        index = self._index(variable)
        dtype = variable.dtype
        old = ops.convert_to_tensor(variable) if self._intended[index] is not None else None
        if self.compensation == "stochastic":
            new = _stochastic_bfloat16(target, self._seed_generator)
        else:
            new = ops.cast(target, dtype)
        buffer = self._buffers[index]
        residual = None
        if buffer is not None:
            residual = ops.cast(ops.subtract(target, ops.cast(new, "float32")), buffer.dtype)
            buffer.assign(residual)
        if self._intended[index] is not None:
            self._count_updates(index, old, new, residual, before, target)
        variable.assign(new)

    def _count_updates(self, index: int, old: Any, new: Any, residual: Any, before: Any, target: Any) -> None:
        kept = ops.cast(new, "float32")
        if residual is not None:
            kept = ops.add(kept, ops.cast(residual, "float32"))
        moved = ops.not_equal(target, before)
        self._intended[index].assign(_count(moved))
        self._cancelled[index].assign(_count(ops.logical_and(moved, ops.equal(new, old))))
        self._lost[index].assign(_count(ops.logical_and(moved, ops.equal(kept, before))))

    def _make_epsilon_safe(self, var_list: Sequence[Any]) -> None:
        slot_is_low = self.slot_dtype == "auto" and any(str(v.dtype) == "float16" for v in var_list)
        epsilon = getattr(self.inner_optimizer, "epsilon", None)
        floor = facts("float16").smallest_normal
        if slot_is_low and isinstance(epsilon, float) and epsilon < floor:
            self.inner_optimizer.epsilon = floor
            self.adjustments.append(
                f"epsilon raised from {epsilon:g} to {floor:g} (smallest normal float16) because "
                "the optimizer moments are stored in float16"
            )

    # -- instrumenting the inner optimizer ---------------------------------
    def _instrument(self, inner: keras.optimizers.Optimizer) -> None:
        cls = type(inner)
        self._original_index = inner._get_variable_index
        wrapper = self

        def get_index(variable: Any) -> Any:
            return wrapper._original_index(wrapper._proxies.entries.get(id(variable), (variable,))[0])

        def update_step(gradient: Any, variable: Any, learning_rate: Any) -> Any:
            if not is_low_float(variable.dtype):
                return cls.update_step(inner, gradient, variable, learning_rate)
            proxy = wrapper._proxy(variable)
            wrapper._proxies.entries[id(proxy)] = (variable, proxy)
            try:
                return cls.update_step(inner, _dense_float32(gradient), proxy, ops.cast(learning_rate, "float32"))
            finally:
                wrapper._proxies.entries.pop(id(proxy), None)

        def writer(combine: Callable[[Any, Any], Any], original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            def write(variable: Any, value: Any) -> Any:
                entry = wrapper._proxies.entries.get(id(variable))
                if entry is None:
                    return original(variable, value)
                real, proxy = entry
                return wrapper._write(real, proxy, combine(proxy, ops.cast(value, "float32")))

            return write

        def add_slot(reference_variable: Any, name: str | None = None, initializer: Any = "zeros") -> Any:
            if wrapper.slot_dtype == "float32" and is_low_float(reference_variable.dtype):
                return inner.add_variable(
                    shape=reference_variable.shape,
                    initializer=initializer,
                    dtype="float32",
                    name=f"{reference_variable.path.replace('/', '_')}_{name or 'var'}",
                )
            return cls.add_variable_from_reference(inner, reference_variable, name=name, initializer=initializer)

        def weight_decay(variables: Sequence[Any]) -> None:
            low = [v for v in variables if is_low_float(v.dtype)]
            cls._apply_weight_decay(inner, [v for v in variables if not is_low_float(v.dtype)])
            if inner.weight_decay is None:
                return
            for variable in low:
                if inner._use_weight_decay(variable):
                    before = wrapper._proxy(variable)
                    decay = ops.cast(inner.learning_rate, "float32") * ops.cast(inner.weight_decay, "float32")
                    wrapper._write(variable, before, ops.subtract(before, ops.multiply(before, decay)))

        inner._get_variable_index = get_index
        inner.update_step = update_step
        inner.assign = writer(lambda proxy, value: value, cls.assign.__get__(inner))
        inner.assign_add = writer(ops.add, cls.assign_add.__get__(inner))
        inner.assign_sub = writer(ops.subtract, cls.assign_sub.__get__(inner))
        inner.add_variable_from_reference = add_slot
        inner._apply_weight_decay = weight_decay


class _ProxyTable:
    """Float32 views of 16-bit variables during one update step, by ``id``."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[Any, Any]] = {}


def find_compensated(optimizer: Any) -> CompensatedOptimizer | None:
    """The :class:`CompensatedOptimizer` inside a chain of wrappers, if any.

    Args:
        optimizer: An optimizer, possibly a ``LossScaleOptimizer`` around one.

    Returns:
        The compensated wrapper, or ``None``.
    """
    while optimizer is not None:
        if isinstance(optimizer, CompensatedOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def _count(mask: Any) -> Any:
    return ops.sum(ops.cast(mask, "float32"))


def _dense(gradient: Any) -> Any:
    return ops.convert_to_tensor(gradient)


def _dense_float32(gradient: Any) -> Any:
    return ops.cast(_dense(gradient), "float32")


def _stochastic_bfloat16(x: Any, seed_generator: Any) -> Any:
    """Round float32 ``x`` to bfloat16 up or down with probability by distance.

    Adds uniform random bits below bfloat16's last mantissa bit and truncates,
    so the result is unbiased: E[round(x)] == x.
    """
    bits = ops.view(ops.cast(x, "float32"), "int32")
    noise = keras.random.randint(ops.shape(bits), 0, 1 << 16, dtype="int32", seed=seed_generator)
    rounded = ops.bitwise_and(ops.add(bits, noise), ops.convert_to_tensor(-65536, dtype="int32"))
    return ops.cast(ops.view(rounded, "float32"), "bfloat16")
