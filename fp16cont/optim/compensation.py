"""Compensated 16-bit updates: a wrapper around any Keras optimizer.

With round-to-nearest, ``w + dw == w`` whenever ``|w| > 2048 |dw|`` in
float16 (256 in bfloat16), so small continued-training updates vanish.
:class:`CompensatedOptimizer` wraps any Keras optimizer and, for 16-bit
variables, runs the inner optimizer's update arithmetic in float32 on a
float32 view of the weight, then writes the result back to 16-bit storage:

- ``"kahan"``: a 16-bit error buffer per weight keeps what rounding dropped
  and adds it back on the next update (2 extra bytes per parameter);
- ``"stochastic"``: weights are rounded up or down at random, in proportion
  to the distance (unbiased in expectation; no extra memory). The noise is a
  counter-based hash of the element index, the optimizer step and the seed:
  no random-number state, reproducible on resume, and it fuses into one XLA
  loop with the rest of the update (see :func:`stochastic_round`);
- ``"none"``: round-to-nearest, as plain 16-bit training, but with float32
  arithmetic (bias correction, epsilon) and the stagnation counters.

Every write also counts, per variable, the updates that rounding cancelled
(``dw != 0`` but ``w`` unchanged) and the ones lost outright (not kept in the
buffer either), which :mod:`fp16cont.reporting.stagnation` reports.

Only the public ``keras.ops`` API is used, so the wrapper runs on every Keras
backend. The optimizer given to :class:`CompensatedOptimizer` is never
changed: the wrapper works on a private copy made from its config (with the
values of its variables, if it was built), reachable as ``inner_optimizer``.

Example:
    >>> import keras
    >>> opt = CompensatedOptimizer(keras.optimizers.SGD(0.01), "kahan")
    >>> opt.compensation
    'kahan'
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import keras
from keras import ops

from fp16cont import _keras_compat as compat
from fp16cont.optim.carry import HostValues, optimizer_chain, private_copy, restore_state, state_values
from fp16cont.errors import InvalidArgumentError
from fp16cont.numerics import LOW_PRECISIONS, facts, is_low_float

__all__ = [
    "Compensation",
    "SlotDtype",
    "CompensatedOptimizer",
    "find_compensated",
    "default_compensation",
    "stochastic_round",
    "rounding_key",
    "COMPENSATIONS",
]

Compensation = Literal["kahan", "stochastic", "none"]
SlotDtype = Literal["auto", "float32"]
COMPENSATIONS: tuple[str, ...] = ("kahan", "stochastic", "none")


@keras.saving.register_keras_serializable(package="fp16cont")
class CompensatedOptimizer(keras.optimizers.Optimizer):
    """Wrap a Keras optimizer so 16-bit weights do not lose small updates.

    The optimizer passed in is left as it is: the wrapper trains a private
    copy made from its config (``inner_optimizer``), which starts from the
    values of the given optimizer's variables (iterations, momentum, moments)
    if it was already built for the same variables. ``learning_rate`` and
    ``iterations`` are those of the copy, so schedules and callbacks such as
    ``ReduceLROnPlateau`` act on it through the wrapper.

    Args:
        inner_optimizer: Any Keras optimizer (SGD with or without momentum,
            Adam, AdamW, RMSprop, ...). Its hyper-parameters and slots are
            its own; only the arithmetic on 16-bit variables moves to float32.
        compensation: ``"kahan"``, ``"stochastic"`` or ``"none"``.
        seed: Seed of the stochastic rounding, for reproducible runs.
        slot_dtype: ``"auto"`` keeps optimizer slots (momentum, Adam moments)
            in the variable's 16-bit dtype; ``"float32"`` keeps them in float32.
        track_updates: Count, every step, the updates that rounding cancelled
            or lost (for :mod:`fp16cont.reporting.stagnation`); costs three reductions
            per variable and step, so it is off unless asked for.
        name: Optimizer name.

    Raises:
        InvalidArgumentError: For an unknown ``compensation`` or ``slot_dtype``,
            or an inner object that is not a Keras optimizer.

    Example:
        >>> adam = keras.optimizers.Adam(1e-4)
        >>> opt = CompensatedOptimizer(adam, "stochastic")
        >>> opt.inner_optimizer is adam, type(opt.inner_optimizer).__name__
        (False, 'Adam')
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
                f"compensation={compensation!r}. Fix: compensation='stochastic' works for every 16-bit format."
            )
        if slot_dtype not in ("auto", "float32"):
            raise InvalidArgumentError(
                f"Argument `slot_dtype` should be 'auto' or 'float32'. Received: {slot_dtype!r}. "
                "Fix: slot_dtype='float32' keeps optimizer moments in float32."
            )
        super().__init__(learning_rate=0.0, name=name or f"compensated_{inner_optimizer.name}", **kwargs)
        # a private copy: the caller's optimizer is never built, trained or patched here
        self._start_values = HostValues(state_values(inner_optimizer))
        self.inner_optimizer = private_copy(inner_optimizer)
        self.source_optimizer = weakref.ref(inner_optimizer)  # what was given (see carry.made_from)
        self.compensation = compensation
        self.seed = int(seed)
        self.slot_dtype = slot_dtype
        self.track_updates = bool(track_updates)
        self.fuse_updates = True
        self._fused: Callable[..., Any] | None = None
        self._fused_ids: list[int] = []
        self.adjustments: list[str] = []
        self._proxies = _ProxyTable()  # not a dict: Keras would track the variables put in it
        self._instrument(self.inner_optimizer)

    # -- building ---------------------------------------------------------
    def build(self, var_list: Sequence[Any]) -> None:
        """Create the buffers and counters, then build the inner optimizer.

        Raises:
            InvalidArgumentError: If the optimizer given at construction was
                built for other variables (its state cannot be carried over).
        """
        low = [is_low_float(v.dtype) for v in var_list]
        self._buffers = [
            self.add_variable_from_reference(v, name="kahan") if is_low and self.compensation == "kahan" else None
            for v, is_low in zip(var_list, low)
        ]
        tracked = [is_low and self.track_updates for is_low in low]
        self._intended = [self._counter(v, "intended") if t else None for v, t in zip(var_list, tracked)]
        self._cancelled = [self._counter(v, "cancelled") if t else None for v, t in zip(var_list, tracked)]
        self._lost = [self._counter(v, "lost") if t else None for v, t in zip(var_list, tracked)]
        self._make_epsilon_safe(var_list)
        self.inner_optimizer.build(var_list)
        if self._start_values.values is not None:
            restore_state(self.inner_optimizer, self._start_values.values)
            self._start_values = HostValues(None)
        super().build(var_list)
        self._low = low
        self._paths = [v.path for v in var_list]

    def _counter(self, variable: Any, kind: str) -> Any:
        return self.add_variable(shape=(), dtype="float32", initializer="zeros", name=f"{variable.path.replace('/', '_')}_{kind}")

    @property
    def variables(self) -> list[Any]:
        return compat.optimizer_own_variables(self) + list(self.inner_optimizer.variables)

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
        grads = list(grads)
        variables = list(trainable_variables or compat.optimizer_trainable_variables(self))
        shapes = [v.shape for v in variables] if len(variables) == len(grads) else [None] * len(grads)
        grads = [g if g is None else _dense_float32(g, shape) for g, shape in zip(grads, shapes)]
        fused = self._fused_apply(variables)
        if fused is not None:
            fused(grads)
        else:
            self.inner_optimizer.apply(grads, trainable_variables)

    def _fused_apply(self, variables: list[Any]) -> Callable[..., Any] | None:
        """On TensorFlow, the update of ``variables`` as one XLA-fused function (``None`` elsewhere).

        The variables are captured, not passed: they are the same every step.
        """
        if keras.backend.backend() != "tensorflow" or not self.fuse_updates:
            return None
        from fp16cont import _tensorflow

        if not _tensorflow.single_device():
            return None
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

    @property
    def sixteen_bit(self) -> tuple[bool, ...]:
        """Per variable of :meth:`update_counts`: whether it is stored in 16-bit (empty until built)."""
        return tuple(self._low) if self.built else ()

    # -- the compensated write -------------------------------------------
    def _index(self, variable: Any) -> int:
        return int(self._original_index(variable))

    def _proxy(self, variable: Any) -> Any:
        value = ops.cast(variable, "float32")
        buffer = self._buffers[self._index(variable)]
        if buffer is not None:
            value = ops.add(value, ops.cast(buffer, "float32"))
        return value

    def _write(self, variable: Any, before: Any, target: Any, salt: int = 0) -> None:
        """Store float32 ``target`` into 16-bit ``variable``; ``before`` is its float32 view.

        ``salt`` tells two writes of one variable in one step apart (0: the
        update, 1: weight decay), so that their rounding noise differs.
        """
        index = self._index(variable)
        dtype = variable.dtype
        old = ops.convert_to_tensor(variable) if self._intended[index] is not None else None
        if self.compensation == "stochastic":
            step = ops.cast(self.inner_optimizer.iterations, "int32")
            new = stochastic_round(target, dtype, rounding_key(self.seed, step, 2 * index + salt))
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
            self.inner_optimizer.epsilon = floor  # the private copy's: the given optimizer keeps its own
            note = (
                f"epsilon raised from {epsilon:g} to {floor:g} (smallest normal float16) because "
                "the optimizer moments are stored in float16, where a smaller epsilon flushes to zero"
            )
            self.adjustments.append(note)
            warnings.warn(
                f"{type(self.inner_optimizer).__name__}: {note}. Fix: pass epsilon>={floor:g}, or "
                "slot_dtype='float32' to keep the moments (and epsilon) in float32.",
                UserWarning,
                stacklevel=3,
            )

    # -- instrumenting the private copy -----------------------------------
    def _instrument(self, inner: keras.optimizers.Optimizer) -> None:
        """Route the private copy's 16-bit writes through :meth:`_write`.

        ``inner`` is this wrapper's own copy (never the caller's optimizer),
        so setting instance attributes on it changes nothing outside.
        """
        cls = type(inner)
        self._original_index = compat.variable_index(inner)
        base_decay = compat.base_weight_decay(inner)
        wrapper = self

        def get_index(variable: Any) -> Any:
            return wrapper._original_index(wrapper._proxies.entries.get(id(variable), (variable,))[0])

        def update_step(gradient: Any, variable: Any, learning_rate: Any) -> Any:
            if not is_low_float(variable.dtype):
                return cls.update_step(inner, gradient, variable, learning_rate)
            proxy = wrapper._proxy(variable)
            wrapper._proxies.entries[id(proxy)] = (variable, proxy)
            try:
                return cls.update_step(inner, _dense_float32(gradient, variable.shape), proxy, ops.cast(learning_rate, "float32"))
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
                layout = compat.variable_layout(reference_variable)  # a slot keeps its variable's sharding
                return inner.add_variable(
                    shape=reference_variable.shape,
                    initializer=initializer,
                    dtype="float32",
                    name=f"{reference_variable.path.replace('/', '_')}_{name or 'var'}",
                    **({"layout": layout} if layout is not None else {}),
                )
            return cls.add_variable_from_reference(inner, reference_variable, name=name, initializer=initializer)

        def weight_decay(variables: Sequence[Any]) -> None:
            low = [v for v in variables if is_low_float(v.dtype)]
            base_decay([v for v in variables if not is_low_float(v.dtype)])
            if inner.weight_decay is None:
                return
            for variable in low:
                if compat.uses_weight_decay(inner, variable):
                    before = wrapper._proxy(variable)
                    decay = ops.cast(inner.learning_rate, "float32") * ops.cast(inner.weight_decay, "float32")
                    wrapper._write(variable, before, ops.subtract(before, ops.multiply(before, decay)), salt=1)

        compat.route_variable_index(inner, get_index)
        inner.update_step = update_step
        inner.assign = writer(lambda proxy, value: value, cls.assign.__get__(inner))
        inner.assign_add = writer(ops.add, cls.assign_add.__get__(inner))
        inner.assign_sub = writer(ops.subtract, cls.assign_sub.__get__(inner))
        inner.add_variable_from_reference = add_slot
        compat.route_weight_decay(inner, weight_decay)
        parallel = compat.torch_parallel_update(inner)
        if parallel is not None and keras.backend.backend() == "torch":
            # Keras' torch optimizers never call update_step: their multi-tensor step runs on float32 views
            from fp16cont.optim.torch_update import parallel_step

            compat.route_backend_update(inner, lambda grads, variables, rate: (
                parallel_step(wrapper, parallel, is_low_float, grads, variables, rate) if not wrapper.track_updates
                else [update_step(g, v, rate) for g, v in zip(grads, variables)]))


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
    return next((o for o in optimizer_chain(optimizer) if isinstance(o, CompensatedOptimizer)), None)


def _count(mask: Any) -> Any:
    return ops.sum(ops.cast(mask, "float32"))


def _dense(gradient: Any, shape: Any = None) -> Any:
    """A dense tensor of ``gradient``; an ``IndexedSlices`` is summed into ``shape`` (its variable's).

    TensorFlow's own conversion takes the row count from the slices' run-time
    ``dense_shape``; inside the XLA-fused update that made the shape, and so
    the slices, compile-time constants, and XLA compiled the update anew at
    every step of a model with an ``Embedding`` layer.
    """
    if shape is not None and type(gradient).__name__ == "IndexedSlices" and shape[0] is not None:
        return ops.segment_sum(gradient.values, gradient.indices, num_segments=int(shape[0]))
    return ops.convert_to_tensor(gradient)


def _dense_float32(gradient: Any, shape: Any = None) -> Any:
    if ops.is_tensor(gradient) and keras.backend.standardize_dtype(gradient.dtype) == "float32" and not _is_sparse(gradient):
        return gradient  # already dense float32 (the loss scale's unscaled gradients): no per-variable cast
    return ops.cast(_dense(gradient, shape), "float32")


def _is_sparse(gradient: Any) -> bool:
    return type(gradient).__name__ in ("IndexedSlices", "SparseTensor", "BCOO")


def default_compensation(precision: str) -> str | None:
    """The compensation ``continue_training(compensation="auto")`` uses for a precision.

    Chosen by measurement (``benchmarks/mnist_continued.py``, see
    ``benchmarks/RESULTS.md``): for pure 16-bit models stochastic rounding
    keeps weight + optimizer bytes at 0.51x float32 and matched float32 test
    accuracy within 0.2 pp with Adam (lr 0.01, 0.001) and SGD+momentum at lr
    0.001; at SGD lr 0.01 it was 0.7 pp below, as was Kahan, which needs a
    16-bit buffer per weight (0.75x bytes with momentum, 0.67x with Adam).

    Args:
        precision: The model's float precision: ``"float16"``, ``"bfloat16"``,
            ``"mixed_float16"``, ``"mixed_bfloat16"`` or ``"float32"``.

    Returns:
        ``"stochastic"`` for pure 16-bit models; ``None`` otherwise (float32
        variables need no compensation).

    Example:
        >>> default_compensation("bfloat16"), default_compensation("mixed_bfloat16")
        ('stochastic', None)
    """
    return "stochastic" if precision in LOW_PRECISIONS else None


def rounding_key(seed: int, step: Any, salt: Any = 0) -> Any:
    """The 32-bit key of one stochastic rounding: a hash of seed, step and salt.

    Args:
        seed: The user's seed.
        step: The optimizer step (an int32 scalar tensor or a Python int).
        salt: Tells roundings of one step apart (e.g. the variable's index).

    Returns:
        An int32 scalar tensor.

    Example:
        >>> int(rounding_key(0, 1)) != int(rounding_key(0, 2))
        True
    """
    if not isinstance(salt, int):  # a traced salt: the salt's part on the device
        fixed = _lowbias32(ops.add(ops.multiply(ops.cast(salt, "int32"), _i32(0x85EBCA6B)), _i32(_seed_base(seed))))
    else:
        fixed = _i32(key_constant(seed, salt))
    return _lowbias32(ops.add(ops.multiply(ops.cast(step, "int32"), _i32(0x9E3779B9)), fixed))


def key_constant(seed: int, salt: int) -> int:
    """The part of :func:`rounding_key` that depends on ``seed`` and ``salt`` only, on the host.

    ``rounding_key(seed, step, salt)`` is ``lowbias32(step * 0x9E3779B9 +
    key_constant(seed, salt))``: the step's part is the only one left for
    the device, one hash instead of three per rounding.

    Args:
        seed: The user's seed.
        salt: A Python int.

    Returns:
        An int32 value as a Python int.

    Example:
        >>> key_constant(0, 1) != key_constant(0, 2)
        True
    """
    return _lowbias32_int(int(salt) * 0x85EBCA6B + _seed_base(seed))


def _seed_base(seed: int) -> int:
    """The seed's part of every rounding key, on the host."""
    return _lowbias32_int(int(seed) * 0x9E3779B9 + 0x6A09E667)


def stochastic_round(x: Any, dtype: str, key: Any) -> Any:
    """Round float32 ``x`` to ``dtype`` up or down with probability by distance.

    A counter-based hash of each element's index and ``key`` gives uniform
    noise below the target format's last mantissa bit; it is added to the
    float32 bit pattern, which is then truncated. Hence
    ``P(up) = distance to the lower neighbour / spacing`` and ``E[result] == x``.
    There is no random-number state: the same key gives the same rounding,
    and the arithmetic is integer element-wise code that XLA fuses.

    - ``"bfloat16"``: the low 16 bits are dropped; exact for every finite value.
    - ``"float16"``: the low 13 bits are dropped, which is exact for normal
      float16 values (``|x| >= 2**-14``); the final cast then rounds float16
      subnormals to nearest, which leaves a bias of at most half a subnormal
      spacing (``2**-25``) per value. Values beyond the float16 range
      overflow to infinity as with a cast.

    NaN stays NaN and infinities stay infinite.

    Args:
        x: A float32 tensor.
        dtype: ``"bfloat16"`` or ``"float16"``.
        key: An int32 scalar, e.g. from :func:`rounding_key`.

    Returns:
        A tensor of ``dtype`` and the shape of ``x``.

    Example:
        >>> import numpy as np
        >>> x = np.full(10000, 1.0 + 2.0**-9, np.float32)  # a quarter of the way to the next bfloat16
        >>> r = keras.ops.convert_to_numpy(keras.ops.cast(stochastic_round(x, "bfloat16", rounding_key(0, 0)), "float32"))
        >>> sorted(set(r.tolist())), bool(abs(r.mean() - x[0]) < 2e-4)
        ([1.0, 1.0078125], True)
    """
    name = str(getattr(dtype, "name", dtype))
    drop = facts("float32").mantissa_bits - facts(name).mantissa_bits  # 16 for bfloat16, 13 for float16
    x = ops.cast(x, "float32")
    bits = ops.view(x, "int32")
    shape = ops.shape(x)
    index = ops.reshape(ops.arange(_size(shape), dtype="int32"), shape)
    noise = _shift_right(_lowbias32(ops.add(index, key)), 32 - drop)
    rounded = ops.view(ops.bitwise_and(ops.add(bits, noise), _i32(-(1 << drop))), "float32")
    return ops.cast(ops.where(ops.isnan(x), x, rounded), name)


def _size(shape: Any) -> int:
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def _wrap32(value: int) -> int:
    """``value`` as a two's-complement int32."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _i32(value: int) -> Any:
    return ops.convert_to_tensor(_wrap32(value), dtype="int32")


def _shift_right(h: Any, n: int) -> Any:
    """Logical right shift of int32 ``h`` (the backends shift signed values arithmetically)."""
    return ops.bitwise_and(ops.right_shift(h, _i32(n)), _i32((1 << (32 - n)) - 1))


def _lowbias32_int(h: int) -> int:
    """:func:`_lowbias32` of a Python int (taken modulo 2**32), as an int32 value."""
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    return _wrap32(h)


def _lowbias32(h: Any) -> Any:
    """The lowbias32 integer hash (a bijection of 32-bit words), on int32 with wrap-around."""
    h = ops.bitwise_xor(h, _shift_right(h, 16))
    h = ops.multiply(h, _i32(0x7FEB352D))
    h = ops.bitwise_xor(h, _shift_right(h, 15))
    h = ops.multiply(h, _i32(0x846CA68B))
    return ops.bitwise_xor(h, _shift_right(h, 16))
