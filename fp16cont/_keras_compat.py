"""Every use of a private Keras name in fp16cont, in one place.

Keras 3 keeps a few things fp16cont needs behind underscores: walking a
layer's sub-layers, the layer that produced a symbolic tensor, setting one
layer's dtype policy without editing a shared policy map, an optimizer's
schedule object and its per-variable hooks, the hooks of
``LossScaleOptimizer`` that run after a finite or non-finite step, building a
model's metrics and loss for a batch without training on it, and the JAX
trainer's protocol for state that lives outside the variables while a
training loop runs. Each is used here only, behind a small function that
checks the installed Keras against the range fp16cont is tested with
(``SUPPORTED_KERAS``) and that the name still exists, so that a renamed
attribute fails with :class:`UnsupportedKerasError` naming that range instead
of silently doing nothing. ``tests/test_keras_compat.py`` checks that no other
module of fp16cont touches a private Keras name.

Example:
    >>> check_keras_version()  # raises UnsupportedKerasError outside the range
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import keras

from fp16cont.errors import Fp16ContError

__all__ = [
    "SUPPORTED_KERAS",
    "UnsupportedKerasError",
    "check_keras_version",
    "flatten_layers",
    "producing_layer",
    "replace_variable",
    "is_functional",
    "set_layer_policy",
    "learning_rate_schedule",
    "variable_layout",
    "optimizer_own_variables",
    "optimizer_trainable_variables",
    "variable_index",
    "route_variable_index",
    "base_weight_decay",
    "route_weight_decay",
    "uses_weight_decay",
    "LOSS_SCALE_HOOKS",
    "loss_scale_hooks",
    "check_loss_scale_hooks",
    "base_loss_scale_hook",
    "symbolic_build",
    "set_pending_jax_state",
    "jax_state_was_synced",
    "clear_jax_state",
    "update_metrics_after_step",
]

SUPPORTED_KERAS = ((3, 8), (4, 0))  # [lowest, highest) major.minor tested

T = TypeVar("T")


class UnsupportedKerasError(Fp16ContError, RuntimeError):
    """The installed Keras is outside the tested range or lacks an internal fp16cont relies on."""


def _version() -> tuple[int, int]:
    major, minor = (int("".join(c for c in p if c.isdigit()) or 0) for p in keras.__version__.split(".")[:2])
    return major, minor


def _supported_range() -> str:
    low, high = SUPPORTED_KERAS
    return f"{low[0]}.{low[1]} up to (not including) {high[0]}.{high[1]}"


def _fix() -> str:
    low, high = SUPPORTED_KERAS
    return f"Fix: pip install 'keras>={low[0]}.{low[1]},<{high[0]}.{high[1]}'."


def check_keras_version() -> None:
    """Raise :class:`UnsupportedKerasError` outside the tested Keras range.

    Raises:
        UnsupportedKerasError: If ``keras.__version__`` is outside ``SUPPORTED_KERAS``.

    Example:
        >>> check_keras_version()
    """
    low, high = SUPPORTED_KERAS
    if not low <= _version() < high:
        raise UnsupportedKerasError(
            f"fp16cont supports Keras {_supported_range()}; this process has Keras {keras.__version__}. {_fix()}"
        )


def _require(obj: Any, name: str, what: str) -> Any:
    """``getattr(obj, name)`` after checking the Keras version and that ``name`` exists."""
    check_keras_version()
    if not hasattr(obj, name):
        owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise UnsupportedKerasError(
            f"Keras {keras.__version__} has no `{owner}.{name}`, which fp16cont uses for {what}; "
            f"fp16cont supports Keras {_supported_range()}. {_fix()}"
        )
    return getattr(obj, name)


# -- layers and models -------------------------------------------------------
def flatten_layers(layer: keras.layers.Layer, recursive: bool = True) -> list[keras.layers.Layer]:
    """The sub-layers of ``layer`` (itself excluded), depth first.

    Args:
        layer: A Keras layer or model.
        recursive: Also the sub-layers of sub-layers.

    Returns:
        The layers, parents before their children.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> [type(l).__name__ for l in flatten_layers(m)]
        ['InputLayer', 'Dense']
    """
    walk = _require(layer, "_flatten_layers", "walking sub-layers")
    return list(walk(include_self=False, recursive=recursive))  # private Keras API


def replace_variable(layer: keras.layers.Layer, attribute: str, dtype: str) -> Any:
    """Re-create the variable ``layer.<attribute>`` in ``dtype``, values cast, in its place.

    Keras fixes some variables' dtype (LoRA adapters are always float32); this
    puts a copy in another dtype at the same position of the layer's variable
    lists, so ``model.weights`` keeps its order. Used for LoRA adapters only.

    Args:
        layer: A built layer.
        attribute: The attribute that holds the variable (``"lora_kernel_a"``).
        dtype: The new dtype.

    Returns:
        The new variable.

    Example:
        >>> replace_variable(layer, "lora_kernel_a", "bfloat16")  # doctest: +SKIP
    """
    old = getattr(layer, attribute)
    tracker = _require(layer, "_tracker", "replacing a variable")
    stores = [_require(layer, name, "replacing a variable") for name in ("_trainable_variables", "_non_trainable_variables")]
    was_locked = bool(getattr(tracker, "locked", False))
    tracker.unlock()  # private Keras API
    try:
        new = layer.add_weight(name=old.name, shape=old.shape, initializer="zeros", dtype=dtype, trainable=old.trainable)
        new.assign(keras.ops.cast(old.value, dtype))
        for store in stores:  # private Keras API: drop the appended copy, put it where the old one was
            store[:] = [v for v in store if v is not new]
            store[:] = [new if v is old else v for v in store]
        for ids in getattr(tracker, "stored_ids", {}).values():  # private Keras API
            ids.discard(id(old))
        object.__setattr__(layer, attribute, new)  # already tracked: skip Layer.__setattr__
    finally:
        if was_locked:
            tracker.lock()  # private Keras API
    return new


def producing_layer(tensor: Any) -> keras.layers.Layer:
    """The layer (operation) that produced a symbolic Keras tensor.

    Args:
        tensor: A ``keras.KerasTensor``, e.g. one of ``model.outputs``.

    Returns:
        The producing layer.
    """
    return _require(tensor, "_keras_history", "finding a functional model's output layers").operation  # private Keras API


def is_functional(model: Any) -> bool:
    """Whether ``model`` is a graph of layers (a Functional model or a subclass of one).

    Args:
        model: Any object.

    Returns:
        True for Functional models (and subclasses of them), False for
        ``Sequential`` (which callers test first), subclassed models and layers.

    Example:
        >>> inputs = keras.Input((3,))
        >>> is_functional(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
        True
    """
    check_keras_version()
    return isinstance(model, keras.Model) and hasattr(model, "_operations") and hasattr(model, "outputs")  # private Keras API


def set_layer_policy(layer: keras.layers.Layer, policy: keras.DTypePolicy) -> None:
    """Give one layer its own dtype policy, leaving a policy map it shares with others intact.

    The public ``layer.dtype_policy = ...`` setter writes into a shared
    ``DTypePolicyMap`` instead, which would change the other layers' policy.

    Args:
        layer: A layer of a model fp16cont built (never a user's layer).
        policy: The plain policy.
    """
    _require(layer, "_dtype_policy", "setting a layer's dtype policy")
    layer._dtype_policy = policy  # private Keras API


# -- optimizers ----------------------------------------------------------------
def learning_rate_schedule(optimizer: keras.optimizers.Optimizer) -> Any:
    """The learning rate as given: a schedule object, or the variable holding a constant rate.

    Args:
        optimizer: A Keras optimizer.

    Returns:
        A ``LearningRateSchedule`` (or a callable) or a variable.
    """
    return _require(optimizer, "_learning_rate", "copying an optimizer with a learning-rate schedule")  # private Keras API


def variable_layout(variable: Any) -> Any:
    """The distribution layout (sharding) of a variable, ``None`` when it has none.

    Args:
        variable: A Keras variable.

    Returns:
        The layout Keras created the variable with, or ``None``.
    """
    check_keras_version()
    return getattr(variable, "_layout", None)  # private Keras API


def optimizer_own_variables(optimizer: keras.optimizers.Optimizer) -> list[Any]:
    """The variables an optimizer (e.g. a wrapper) created itself, without those of its inner optimizer.

    Args:
        optimizer: A Keras optimizer.

    Returns:
        A new list.
    """
    return list(_require(optimizer, "_variables", "listing a wrapper's own variables"))  # private Keras API


def optimizer_trainable_variables(optimizer: keras.optimizers.Optimizer) -> list[Any]:
    """The model variables a built optimizer was built for.

    Args:
        optimizer: A built Keras optimizer.

    Returns:
        A new list.
    """
    return list(_require(optimizer, "_trainable_variables", "the variables an optimizer was built for"))  # private Keras API


def variable_index(optimizer: keras.optimizers.Optimizer) -> Callable[[Any], int]:
    """The optimizer's own lookup from a model variable to its slot index (bound, unrouted).

    Args:
        optimizer: A Keras optimizer.

    Returns:
        ``index(variable) -> int``.
    """
    return _require(optimizer, "_get_variable_index", "finding an optimizer's slots")  # private Keras API


def route_variable_index(optimizer: keras.optimizers.Optimizer, index: Callable[[Any], int]) -> None:
    """Make ``optimizer`` find slots through ``index`` (only ever on a wrapper's private copy).

    Args:
        optimizer: The private copy a wrapper owns.
        index: Replaces the optimizer's slot lookup.
    """
    _require(optimizer, "_get_variable_index", "finding an optimizer's slots")
    optimizer._get_variable_index = index  # private Keras API


def base_weight_decay(optimizer: keras.optimizers.Optimizer) -> Callable[[Sequence[Any]], None]:
    """The class's own decoupled weight decay, bound to ``optimizer`` (unaffected by routing).

    Args:
        optimizer: A Keras optimizer.

    Returns:
        ``decay(variables) -> None``.
    """
    method = _require(type(optimizer), "_apply_weight_decay", "decoupled weight decay")  # private Keras API
    return functools.partial(method, optimizer)


def route_weight_decay(optimizer: keras.optimizers.Optimizer, decay: Callable[[Sequence[Any]], None]) -> None:
    """Make ``optimizer`` apply weight decay through ``decay`` (only ever on a wrapper's private copy).

    Args:
        optimizer: The private copy a wrapper owns.
        decay: Replaces the optimizer's weight-decay step.
    """
    _require(optimizer, "_apply_weight_decay", "decoupled weight decay")
    optimizer._apply_weight_decay = decay  # private Keras API


def torch_parallel_update(optimizer: keras.optimizers.Optimizer) -> Callable[[Any, Any, Any], None] | None:
    """The multi-tensor update of Keras' torch optimizers (``torch._foreach`` over all variables), bound.

    Args:
        optimizer: A Keras optimizer.

    Returns:
        ``update(grads, variables, learning_rate)``, or ``None`` where the
        class has none (other backends, custom optimizers).
    """
    method = getattr(type(optimizer), "_parallel_update_step", None)  # private Keras API
    return None if method is None else functools.partial(method, optimizer)


def route_backend_update(optimizer: keras.optimizers.Optimizer, update: Callable[[Any, Any, Any], None]) -> None:
    """Make ``optimizer`` run ``update(grads, variables, learning_rate)`` as its step (only on a wrapper's private copy).

    Args:
        optimizer: The private copy a wrapper owns.
        update: Replaces the optimizer's backend update step.
    """
    _require(optimizer, "_backend_update_step", "an optimizer's update step")
    optimizer._backend_update_step = update  # private Keras API


def uses_weight_decay(optimizer: keras.optimizers.Optimizer, variable: Any) -> bool:
    """Whether ``optimizer`` decays ``variable`` (``exclude_from_weight_decay`` respected).

    Args:
        optimizer: A Keras optimizer.
        variable: A model variable.

    Returns:
        True if the variable is decayed.
    """
    return bool(_require(optimizer, "_use_weight_decay", "decoupled weight decay")(variable))  # private Keras API


# -- LossScaleOptimizer's step hooks -------------------------------------------
LOSS_SCALE_HOOKS: dict[str, str] = {  # private Keras API: LossScaleOptimizer's hooks -> fp16cont's methods
    "_stateful_handle_finite_grads": "finite_step",
    "_stateful_handle_non_finite_grads": "non_finite_step",
    "_stateless_handle_finite_grads": "stateless_finite_step",
    "_stateless_handle_non_finite_grads": "stateless_non_finite_step",
}


def loss_scale_hooks(cls: type[T]) -> type[T]:
    """Class decorator: ``LossScaleOptimizer`` calls ``cls``'s methods after each step.

    ``cls`` defines ``finite_step(grads, trainable_variables)``,
    ``non_finite_step()``, ``stateless_finite_step(optimizer_variables, grads,
    trainable_variables)`` and ``stateless_non_finite_step(optimizer_variables,
    trainable_variables)``; each is installed under the private hook name
    ``LossScaleOptimizer`` calls. :func:`check_loss_scale_hooks` (called when
    such an optimizer is made) fails loudly if Keras renamed the hooks.

    Args:
        cls: A subclass of ``keras.optimizers.LossScaleOptimizer``.

    Returns:
        ``cls``.
    """
    for private, own in LOSS_SCALE_HOOKS.items():
        setattr(cls, private, getattr(cls, own))  # private Keras API
    return cls


def check_loss_scale_hooks() -> None:
    """Raise unless ``LossScaleOptimizer`` still calls the hooks :func:`loss_scale_hooks` installs.

    Raises:
        UnsupportedKerasError: Outside the tested Keras range, or if a hook was renamed.

    Example:
        >>> check_loss_scale_hooks()
    """
    for private in LOSS_SCALE_HOOKS:
        _require(keras.optimizers.LossScaleOptimizer, private, "the loss scale's floor, ceiling and skip counters")


def base_loss_scale_hook(optimizer: keras.optimizers.LossScaleOptimizer, own: str, *args: Any) -> Any:
    """Run Keras' own ``LossScaleOptimizer`` hook that ``own`` (a key's value in :data:`LOSS_SCALE_HOOKS`) replaces.

    Args:
        optimizer: The loss-scale optimizer.
        own: ``"finite_step"``, ``"non_finite_step"``, ``"stateless_finite_step"`` or ``"stateless_non_finite_step"``.
        *args: The hook's arguments.

    Returns:
        What Keras' hook returns.
    """
    private = next(k for k, v in LOSS_SCALE_HOOKS.items() if v == own)
    return _require(keras.optimizers.LossScaleOptimizer, private, "loss scaling")(optimizer, *args)  # private Keras API


# -- the training engine ---------------------------------------------------------
def torch_device() -> str:
    """The device Keras' torch backend puts new tensors on.

    Returns:
        A torch device string: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ...

    Example:
        >>> torch_device()  # doctest: +SKIP
        'cuda'
    """
    from keras.src.backend.torch import core  # private Keras API: the torch backend's device

    return str(core.get_device())


def symbolic_build(model: keras.Model, batch: Any) -> None:
    """Create a model's metric and loss variables for ``batch``, as ``fit`` does first.

    Args:
        model: A compiled Keras model.
        batch: One ``(x, y)`` or ``(x, y, sample_weight)`` batch of arrays.
    """
    _require(model, "_symbolic_build", "building a model's metrics before training")(data_batch=batch)  # private Keras API


def set_pending_jax_state(model: keras.Model, state: tuple[Any, Any, Any, Any]) -> None:
    """Hand the trained state to Keras' JAX trainer protocol without writing it back.

    Keras callbacks that read ``self.model`` on the JAX backend call
    ``model.jax_state_sync()``, which writes this state into the variables
    first; a loop that runs no such callback never pays for the write.

    Args:
        model: The model being trained.
        state: ``(trainable, non_trainable, optimizer, metrics)`` value lists.
    """
    _require(model, "jax_state_sync", "the JAX training engine")
    trainable, non_trainable, optimizer, metrics = state
    model._jax_state = {  # private Keras API: the JAX trainer's pending state
        "trainable_variables": trainable,
        "non_trainable_variables": non_trainable,
        "optimizer_variables": optimizer,
        "metrics_variables": metrics,
    }
    model._jax_state_synced = False  # private Keras API


def jax_state_was_synced(model: keras.Model) -> bool:
    """Whether a callback wrote the pending state back (and may have changed it)."""
    return bool(getattr(model, "_jax_state_synced", True))  # private Keras API


def clear_jax_state(model: keras.Model) -> None:
    """Write any pending state back and end the protocol (``fit`` does this last)."""
    model.jax_state_sync()
    model._jax_state = None  # private Keras API


def update_metrics_after_step(model: keras.Model, metrics_variables: Any, unscaled_loss: Any, x: Any, y: Any,
                              y_pred: Any, sample_weight: Any) -> tuple[dict[str, Any], list[Any]]:
    """The JAX trainer's metric update after a step: the loss tracker, then the compiled metrics.

    Args:
        model: The model being trained (JAX backend).
        metrics_variables: The metric variables' values before the update.
        unscaled_loss: The step's loss, before any loss scaling.
        x, y, y_pred, sample_weight: The step's batch and predictions.

    Returns:
        ``(logs, new metrics_variables)``, as the trainer's ``train_step`` makes them.
    """
    update = _require(model, "_update_metrics_variables", "the JAX training engine's per-replica step")
    return update(metrics_variables, unscaled_loss, x, y, y_pred, sample_weight)  # private Keras API
