"""The compensated update on Keras' torch backend, with the optimizer's own multi-tensor step.

Keras' torch optimizers (SGD, Adam, AdamW, RMSprop, ...) update all variables
at once with ``torch._foreach`` operations (``_parallel_update_step``) and
never call ``update_step``. Run variable by variable instead, every 16-bit
variable costs some 60 eager operations a step (float32 views, the update,
the rounding), each dispatched from Python: on a GPU that is slower than the
whole float32 step. Here, per step:

1. the 16-bit variables (plus the Kahan buffer) are concatenated into one
   float32 buffer per dtype, and each variable's float32 view is a slice of it;
2. the optimizer's own multi-tensor step runs on those views (so its float32
   arithmetic and its slots are exactly Keras'; the slots keep their dtype);
3. the buffer, updated in place, is rounded to 16 bits in one pass
   (:func:`~fp16cont.optim.compensation.stochastic_round` with one key per
   step and dtype, or round-to-nearest with the Kahan residual), and copied
   back with one ``torch._foreach_copy_``.

So a step costs a few dozen operations whatever the number of variables.
On a CPU the rounding runs block by block, so its integer temporaries stay
in the cache instead of making some twenty passes over main memory.
The rounding noise is the same function of (seed, step, element) as on the
other backends, but the element index runs over the concatenation, so the
random stream differs from TensorFlow's and JAX's (it is reproducible).

Example:
    >>> # used by CompensatedOptimizer on the torch backend; nothing to call directly
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["parallel_step", "step_key"]

_SALT = 0x7FFF  # the concatenated write of one dtype: a salt no per-variable write uses at this size


class _Float32View:
    """What a torch multi-tensor step reads of a variable: ``.value``, here a float32 tensor."""

    def __init__(self, variable: Any, value: Any) -> None:
        self.variable = variable
        self.value = value
        self.dtype = value.dtype
        self.shape = variable.shape
        self.path = variable.path
        self.name = variable.name


def parallel_step(wrapper: Any, parallel: Callable[[Any, Any, Any], None], low_float: Callable[[Any], bool],
                  grads: Sequence[Any], variables: Sequence[Any], learning_rate: Any) -> None:
    """One compensated step of a Keras torch optimizer over all variables.

    Args:
        wrapper: The :class:`~fp16cont.optim.compensation.CompensatedOptimizer`.
        parallel: The inner optimizer's own multi-tensor update, bound.
        low_float: Whether a dtype is a 16-bit float.
        grads: Float32 gradients, one per variable.
        variables: The variables being trained.
        learning_rate: The learning rate of this step.
    """
    import torch

    with torch.no_grad():
        low = [i for i, v in enumerate(variables) if low_float(v.dtype)]
        high = [i for i in range(len(variables)) if not low_float(variables[i].dtype)]
        if high:
            parallel([grads[i] for i in high], [variables[i] for i in high], learning_rate)
        if not low:
            return
        real = [variables[i] for i in low]
        buffers = [wrapper._buffers[wrapper._index(v)] for v in real]
        groups = {dtype: [k for k, v in enumerate(real) if str(v.dtype) == dtype] for dtype in sorted({str(v.dtype) for v in real})}
        flats, views = {}, [None] * len(real)
        for dtype, group in groups.items():
            # one float32 buffer per dtype, made by one concatenation and one cast (not one copy per
            # variable: on a GPU each is a Python dispatch); each variable's view is a slice of it
            flats[dtype] = flat = _concatenate([real[k].value for k in group])
            if buffers[group[0]] is not None:  # Kahan: every 16-bit variable has its buffer
                flat.add_(_concatenate([buffers[k].value for k in group]))
            for k, part in zip(group, flat.split([real[k].value.numel() for k in group])):
                views[k] = _Float32View(real[k], part.view(real[k].value.shape))
        for view in views:
            wrapper._proxies.entries[id(view)] = (view.variable, view)  # slots are found through the variable
        try:
            parallel([grads[i] if grads[i].dtype == torch.float32 else grads[i].float() for i in low], views, learning_rate)
        finally:
            for view in views:
                wrapper._proxies.entries.pop(id(view), None)
        for dtype, group in groups.items():
            _write_back(wrapper, [real[k] for k in group], [buffers[k] for k in group], flats[dtype], dtype)


def _concatenate(tensors: Sequence[Any]) -> Any:
    """The tensors flattened end to end, as one new float32 tensor (exact for 16-bit inputs).

    One ``torch.cat`` into a float32 output: the conversion happens in the
    copy, with no 16-bit intermediate.
    """
    import torch

    flat = [t.reshape(-1) for t in tensors]
    out = torch.empty(sum(t.numel() for t in flat), dtype=torch.float32, device=flat[0].device)
    return torch.cat(flat, out=out)


def _write_back(wrapper: Any, variables: list[Any], buffers: list[Any], flat: Any, dtype: str) -> None:
    import torch

    if wrapper.compensation == "stochastic":
        key = step_key(wrapper.seed, wrapper.inner_optimizer.iterations.value, _SALT)
        new = _blocked_stochastic_round(flat, dtype, key, block=None if flat.is_cuda else _BLOCK)
    else:
        new = flat.to(getattr(torch, dtype))
    sizes = [v.value.numel() for v in variables]
    torch._foreach_copy_([v.value for v in variables], [p.view(v.value.shape) for p, v in zip(new.split(sizes), variables)])
    kahan = [b for b in buffers if b is not None]
    if kahan:
        residual = (flat - new.float()).split(sizes)
        torch._foreach_copy_([b.value for b in kahan],
                             [r.view(b.value.shape).to(b.value.dtype) for r, b in zip(residual, buffers) if b is not None])


def step_key(seed: int, step: Any, salt: int) -> Any:
    """:func:`~fp16cont.optim.compensation.rounding_key` of a step held in a torch tensor, the same value.

    The part that depends on ``seed`` and ``salt`` only is computed on the
    host; the step's part is a handful of in-place integer operations on its
    device. Neither reads the step back (on a GPU that would wait for it),
    and there is none of the per-call overhead of some forty Keras operations
    on a scalar.

    Args:
        seed: The user's seed.
        step: The optimizer's step, a torch integer tensor (any device).
        salt: As in ``rounding_key``.

    Returns:
        An int32 scalar tensor on ``step``'s device.
    """
    import torch

    from fp16cont.optim.compensation import _wrap32, key_constant

    h = step.to(torch.int32).mul(_wrap32(0x9E3779B9)).add_(key_constant(seed, salt))
    return _lowbias32_(h)


def _lowbias32_(h: Any) -> Any:
    """The lowbias32 hash of an int32 tensor, in place (wrap-around arithmetic)."""
    from fp16cont.optim.compensation import _wrap32

    h.bitwise_xor_(_srl(h, 16)).mul_(_wrap32(0x7FEB352D))
    h.bitwise_xor_(_srl(h, 15)).mul_(_wrap32(0x846CA68B))
    return h.bitwise_xor_(_srl(h, 16))


_BLOCK = 1 << 15  # elements per block of the CPU rounding: its int32 temporaries stay in the core's cache


def _blocked_stochastic_round(flat: Any, dtype: str, key: Any, block: int | None = _BLOCK) -> Any:
    """:func:`~fp16cont.optim.compensation.stochastic_round` of a flat float32 tensor, block by block.

    The same values bit for bit (the hash runs over each element's index in
    ``flat``), written with torch's in-place operations. Eager torch makes one
    pass over memory per operation and the rounding is some twenty of them; on
    a CPU, blocks that fit in the cache keep those passes off main memory
    (measured on 2.9 M values, 2 cores: 1.0-1.6x the shared function's speed
    on an idle machine, 7x while other jobs compete for memory bandwidth;
    the shared function called block by block is slower, by Keras' per-call
    overhead). ``block=None`` rounds in one pass (on a GPU: a few kernels
    instead of the Keras operations' per-call overhead); ``key`` may be a
    scalar tensor on ``flat``'s device (from :func:`step_key`).
    """
    import torch

    from fp16cont.numerics import facts
    from fp16cont.optim.compensation import _wrap32

    drop = facts("float32").mantissa_bits - facts(dtype).mantissa_bits  # 16 for bfloat16, 13 for float16
    out = torch.empty(flat.shape, dtype=getattr(torch, dtype), device=flat.device)
    if not torch.is_tensor(key) or key.device != flat.device:
        key = int(key)  # a host value (reading a GPU scalar would wait for the device)
    keep = _wrap32(-(1 << drop))
    size = block or max(flat.numel(), 1)
    for start in range(0, flat.numel(), size):
        x = flat[start:start + size]
        h = _lowbias32_(torch.arange(start, start + x.numel(), dtype=torch.int32, device=flat.device).add_(key))
        bits = _srl(h, 32 - drop).add_(x.view(torch.int32)).bitwise_and_(keep)
        out[start:start + x.numel()] = torch.where(torch.isnan(x), x, bits.view(torch.float32))
    return out


def _srl(h: Any, n: int) -> Any:
    """Logical right shift of an int32 tensor (torch shifts signed values arithmetically)."""
    import torch

    return torch.bitwise_right_shift(h, n).bitwise_and_((1 << (32 - n)) - 1)


def all_finite(grads: Sequence[Any]) -> Any:
    """Whether every gradient is finite, in three operations (Keras: two per gradient).

    The largest magnitude of each gradient (``inf``-norm) is non-finite
    exactly when the gradient holds an ``inf`` or a ``NaN``.

    Args:
        grads: Gradients (``None`` entries are skipped).

    Returns:
        A boolean scalar tensor.
    """
    import torch

    tensors = [g for g in grads if g is not None]
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(tensors, float("inf"))])).all()


def loss_scale_finite_step(scaler: Any, grads: Sequence[Any], trainable_variables: Any) -> None:
    """Keras' ``LossScaleOptimizer`` finite step with multi-tensor operations.

    The gradients are unscaled in float32 as one concatenated tensor (Keras:
    one cast and one division per gradient), the inner optimizer applies them, and
    the growth of the scale is computed without a branch (Keras' ``ops.cond``
    reads the counter on the host, a device sync every step).

    Args:
        scaler: The :class:`~fp16cont.optim.loss_scale.DynamicLossScale`.
        grads: The scaled gradients.
        trainable_variables: As in ``apply``.
    """
    import torch

    with torch.no_grad():
        present = [g for g in grads if g is not None]
        unscaled: list[Any] = [None] * len(grads)
        if present:
            # unscaled in float32 by one concatenation, one cast and one division
            flat = _concatenate(present).div_(scaler.dynamic_scale.value.float())
            parts = iter(p.view(g.shape) for p, g in zip(flat.split([g.numel() for g in present]), present))
            unscaled = [None if g is None else next(parts) for g in grads]
    scaler.inner_optimizer.apply(unscaled, trainable_variables=trainable_variables)
    with torch.no_grad():
        grow = torch.eq(scaler.step_counter.value, scaler.dynamic_growth_steps - 1)
        scaler.step_counter.assign(torch.where(grow, torch.zeros_like(scaler.step_counter.value), scaler.step_counter.value + 1))
        scaler.dynamic_scale.assign(torch.where(grow, scaler.dynamic_scale.value * 2.0, scaler.dynamic_scale.value))
