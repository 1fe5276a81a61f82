"""Carry a float32 model's optimizer state over to its 16-bit copy.

Momentum, Adam moments and the iteration count of the source's optimizer are
cast with the same audit as the weights and loaded into the 16-bit model's
optimizer (its learning rate stays the one chosen for continued training).

Example:
    >>> report = carry_optimizer_state(model32, model16)  # doctest: +SKIP
    >>> report.ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fp16cont import _keras_compat as compat
from fp16cont.errors import InvalidArgumentError, WeightMismatchError
from fp16cont.numerics import facts, is_low_float, numpy_dtype
from fp16cont.convert.quantize import audit_cast
from fp16cont.reporting.results import QuantizationReport, VariableAudit
from fp16cont.convert.sources import to_numpy

__all__ = [
    "optimizer_chain",
    "innermost_optimizer",
    "made_from",
    "carry_optimizer_state",
    "private_copy",
    "state_values",
    "restore_state",
    "HostValues",
]


def optimizer_chain(optimizer: Any) -> list[Any]:
    """The one walk down a chain of optimizer wrappers: the optimizer, then each ``inner_optimizer``.

    Args:
        optimizer: An optimizer, possibly wrapped (loss scaling, compensation), or ``None``.

    Returns:
        Outermost first; empty for ``None``.

    Example:
        >>> sgd = keras.optimizers.SGD(0.01)
        >>> [type(o).__name__ for o in optimizer_chain(keras.optimizers.LossScaleOptimizer(sgd))]
        ['LossScaleOptimizer', 'SGD']
    """
    chain = []
    while optimizer is not None:
        chain.append(optimizer)
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return chain


def innermost_optimizer(optimizer: Any) -> Any:
    """The optimizer at the bottom of a chain of wrappers.

    Args:
        optimizer: An optimizer, possibly wrapped (loss scaling, compensation).

    Returns:
        The innermost optimizer (``None`` for ``None``).
    """
    chain = optimizer_chain(optimizer)
    return chain[-1] if chain else None


def made_from(chain: Any, optimizer: Any) -> bool:
    """Whether ``optimizer`` is in ``chain`` or a wrapper in it copied ``optimizer``.

    Wrappers train a private copy of the optimizer they are given; passing
    that same optimizer again means "the optimizer of this chain".

    Args:
        chain: An optimizer, possibly wrapped.
        optimizer: The optimizer a caller passed.

    Returns:
        True if ``chain`` holds ``optimizer`` or a copy made from it.

    Example:
        >>> sgd = keras.optimizers.SGD(0.01)
        >>> made_from(sgd, sgd), made_from(keras.optimizers.SGD(0.01), sgd)
        (True, False)
    """
    for link in optimizer_chain(chain):
        source = getattr(link, "source_optimizer", None)
        if link is optimizer or (source is not None and source() is optimizer):
            return True
    return False


def private_copy(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """An unbuilt optimizer of the same class and config, for a wrapper to own.

    Wrappers train this copy instead of the caller's optimizer, which is left
    unchanged. A learning-rate schedule that cannot be rebuilt from its config
    (an unregistered custom class) is shared with the copy; schedules hold no
    state.

    Args:
        optimizer: Any Keras optimizer, built or not.

    Returns:
        A new, unbuilt optimizer; :func:`state_values` and
        :func:`restore_state` carry the values of a built one's variables.

    Raises:
        InvalidArgumentError: If the optimizer cannot be rebuilt from its config.

    Example:
        >>> sgd = keras.optimizers.SGD(0.01, momentum=0.9)
        >>> copy = private_copy(sgd)
        >>> copy is sgd, copy.get_config()["momentum"]
        (False, 0.9)
    """
    copy = _from_config(optimizer)
    if getattr(optimizer, "source_optimizer", None) is not None:  # a wrapper: the copy stands for the same source
        copy.source_optimizer = optimizer.source_optimizer
    pending = getattr(optimizer, "_start_values", None)
    if isinstance(pending, HostValues) and pending.values is not None:  # an unbuilt wrapper's carried-over state
        copy._start_values = HostValues(pending.values)
    return copy


def _from_config(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    config = optimizer.get_config()
    try:
        return type(optimizer).from_config(dict(config))
    except (TypeError, ValueError) as err:
        schedule = compat.learning_rate_schedule(optimizer)  # the schedule object itself
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise InvalidArgumentError(
                f"The optimizer {type(optimizer).__name__} cannot be rebuilt from its config ({err}), and "
                "fp16cont trains a copy so as to leave yours unchanged. Fix: make its get_config() return "
                "every __init__ argument, or register its class with @keras.saving.register_keras_serializable()."
            ) from err
        return type(optimizer).from_config({**config, "learning_rate": schedule})


def state_values(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray] | None:
    """Host copies of a built optimizer's variables (``None`` if unbuilt).

    Args:
        optimizer: Any Keras optimizer.

    Returns:
        One array per variable, in ``optimizer.variables`` order, or ``None``.

    Example:
        >>> state_values(keras.optimizers.SGD(0.01)) is None
        True
    """
    if not optimizer.built:
        return None
    return [np.array(to_numpy(v)) for v in optimizer.variables]


class HostValues:
    """:func:`state_values` held by a wrapper until its private copy is built.

    A plain holder rather than a list attribute: Keras would look for
    variables and saveables in a list set on an optimizer.

    Example:
        >>> HostValues(None).values is None
        True
    """

    def __init__(self, values: list[np.ndarray] | None) -> None:
        self.values = values


def restore_state(optimizer: keras.optimizers.Optimizer, values: list[np.ndarray]) -> None:
    """Load :func:`state_values` of an optimizer into its built copy, cast to each variable's dtype.

    Args:
        optimizer: The built copy.
        values: What :func:`state_values` returned for the original.

    Raises:
        InvalidArgumentError: If the original was built for other variables
            (another count or other shapes), so its state has no place here.

    Example:
        >>> restore_state(built_copy, state_values(original))  # doctest: +SKIP
    """
    variables = list(optimizer.variables)
    if len(variables) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        raise InvalidArgumentError(
            f"The optimizer {type(optimizer).__name__} was already built for other variables "
            f"({len(values)} optimizer variables, this model needs {len(variables)} of other shapes), "
            "so its state cannot be carried over. Fix: pass a new, unbuilt optimizer, and carry a trained "
            "float32 model's state with initial_optimizer_state=model32."
        )
    for variable, value in zip(variables, values):
        variable.assign(value.astype(numpy_dtype(variable.dtype)) if "float" in str(variable.dtype) else value)


def carry_optimizer_state(source: keras.Model, target: keras.Model) -> QuantizationReport:
    """Copy the source optimizer's state into the target's, cast and audited.

    Args:
        source: The float32 model, compiled with an optimizer that has state.
        target: The 16-bit copy, compiled with an optimizer of the same class
            (wrappers such as loss scaling or compensation are fine).

    Returns:
        A :class:`QuantizationReport` of the cast optimizer variables
        (overflowing values are saturated).

    Raises:
        InvalidArgumentError: If either model is uncompiled, the source
            optimizer has no state yet, or the optimizer classes differ.
        WeightMismatchError: If the optimizer variables do not correspond.
    """
    src = innermost_optimizer(getattr(source, "optimizer", None))
    dst_outer = getattr(target, "optimizer", None)
    dst = innermost_optimizer(dst_outer)
    if src is None or dst is None or not src.built:
        raise InvalidArgumentError(
            "Optimizer state can only be carried over from a compiled, trained source model to a "
            "compiled target. Fix: train the float32 model with model.fit (or load it from a .keras "
            "file saved after training), and pass it as initial_optimizer_state=model32."
        )
    if type(src) is not type(dst):
        raise InvalidArgumentError(
            f"The source optimizer is {type(src).__name__} but the target's is {type(dst).__name__}. "
            f"Fix: continue with the same optimizer class, e.g. optimizer=keras.optimizers.{type(src).__name__}(...)."
        )
    if not dst_outer.built:
        dst_outer.build(target.trainable_variables)
    sources = [v for v in src.variables if not _is_learning_rate(v)]  # a schedule has no variable
    targets = [v for v in dst.variables if not _is_learning_rate(v)]
    pairs = list(zip(sources, targets))
    if len(sources) != len(targets) or any(tuple(s.shape) != tuple(d.shape) for s, d in pairs):
        raise WeightMismatchError(
            f"The source optimizer has {len(src.variables)} variables and the target's "
            f"{len(dst.variables)} with other shapes: the models differ. Fix: carry state only "
            "between a model and its build_fp16_model copy."
        )
    return _copy(pairs)


def _copy(pairs: list[tuple[Any, Any]]) -> QuantizationReport:
    audits = []
    before = after = 0
    for s, d in pairs:
        value = to_numpy(s)
        base = dict(path=d.path, shape=tuple(value.shape), source_dtype=value.dtype.name, count=int(value.size))
        if is_low_float(d.dtype):
            rounded, counts = audit_cast(np.clip(value, -_limit(d.dtype), _limit(d.dtype)), str(d.dtype))
            counts["overflow"] = int(np.count_nonzero(np.abs(value) > _limit(d.dtype)))
            audits.append(VariableAudit(target_dtype=str(d.dtype), **base, **counts))
            d.assign(rounded)
            after += rounded.nbytes
        else:
            audits.append(VariableAudit(target_dtype=str(d.dtype), passed_through=True, **base))
            d.assign(value.astype(str(d.dtype)) if "float" in str(d.dtype) else value)
            after += value.nbytes
        before += value.nbytes
    precision = next((a.target_dtype for a in audits if not a.passed_through), "float32")
    return QuantizationReport(precision, "saturate", tuple(audits), before, after)


def _limit(dtype: Any) -> float:
    return facts(str(dtype)).max


def _is_learning_rate(variable: Any) -> bool:
    return str(variable.name).split("/")[-1] == "learning_rate"


