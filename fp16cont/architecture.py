"""Rebuild a Keras model's architecture with a dtype policy per layer.

The model is serialized to its config, every layer's ``dtype`` entry is set
to the policy chosen for it, and the config is deserialized into a new model.
Layers that a subclassed model creates in ``__init__`` (absent from its config)
get their policy before the model is built. Nothing global is touched:
``keras.config.floatx()`` and the global dtype policy stay as they are.

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> clone = clone_with_policies(m, lambda layer: "bfloat16")
    >>> clone.layers[0].kernel.dtype
    'bfloat16'
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras

from fp16cont.errors import ModelNotBuiltError, RebuildError

__all__ = ["PolicyFn", "iter_layers", "output_layers", "clone_with_policies", "check_built"]

PolicyFn = Callable[[keras.layers.Layer], "str | None"]


def iter_layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Yield every layer inside ``model``, depth first, nested models included.

    Args:
        model: A Keras model or layer.

    Returns:
        An iterator over the sub-layers (``model`` itself excluded).

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> [type(l).__name__ for l in iter_layers(m)]
        ['Dense']
    """
    yield from model._flatten_layers(include_self=False, recursive=True)


def output_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that produce the model's outputs (recursing into sub-models).

    Args:
        model: A Sequential or Functional model. Subclassed models have no
            known output layer and give an empty list.

    Returns:
        The output layers, without duplicates.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
        >>> [l.name for l in output_layers(m)]
        ['head']
    """
    if isinstance(model, keras.Sequential):
        found = model.layers[-1:] if model.layers else []
    elif _is_functional(model):
        found = [t._keras_history.operation for t in keras.tree.flatten(model.outputs)]
    else:
        return []
    result: list[keras.layers.Layer] = []
    for layer in found:
        for leaf in output_layers(layer) if isinstance(layer, keras.Model) else [layer]:
            if all(leaf is not seen for seen in result):
                result.append(leaf)
    return result


def check_built(model: keras.Model) -> None:
    """Raise :class:`ModelNotBuiltError` when ``model`` has no weights yet.

    Args:
        model: The model to check.

    Raises:
        ModelNotBuiltError: If the model was never built.
    """
    if not model.built:
        raise ModelNotBuiltError(
            f"Model {model.name!r} is not built, so it has no weights to cast. Fix: "
            "give it an input shape (keras.Input(shape=...) as its first layer) or "
            "call model.build(input_shape) / run one batch through it first."
        )


def clone_with_policies(model: keras.Model, policy_of: PolicyFn) -> keras.Model:
    """Rebuild ``model`` from its config with ``policy_of(layer)`` per layer.

    Weights are not copied: the clone has fresh variables in the new dtypes.

    Args:
        model: A built Sequential, Functional or subclassed model (with
            ``get_config``/``from_config``), custom registered layers included.
        policy_of: Returns the dtype policy name for a source layer, or
            ``None`` to keep the layer's config as it is.

    Returns:
        The new, built, uncompiled model.

    Raises:
        ModelNotBuiltError: If ``model`` is not built.
        RebuildError: If the architecture cannot be rebuilt from its config.
    """
    check_built(model)
    config = _serialize(model)
    build_config = config.pop("build_config", None)
    config.pop("compile_config", None)
    _set_config_policies(config, model, policy_of)
    clone = _deserialize(model, config)
    _set_unbuilt_policies(clone, model, policy_of)
    _build_like(clone, model, build_config)
    _check_same_variables(model, clone)
    return clone


def _is_functional(model: keras.layers.Layer) -> bool:
    return isinstance(model, keras.Model) and hasattr(model, "_operations") and hasattr(model, "outputs")


def _serialize(model: keras.Model) -> dict[str, Any]:
    try:
        return copy.deepcopy(keras.saving.serialize_keras_object(model))
    except Exception as err:  # any failure of a user get_config
        raise RebuildError(_rebuild_hint(model, f"get_config() failed: {err}")) from err


def _deserialize(model: keras.Model, config: dict[str, Any]) -> keras.Model:
    try:
        clone = keras.saving.deserialize_keras_object(config)
    except Exception as err:  # any failure of a user from_config
        raise RebuildError(_rebuild_hint(model, f"from_config() failed: {err}")) from err
    if not isinstance(clone, keras.Model):
        raise RebuildError(_rebuild_hint(model, f"from_config() returned {type(clone).__name__}"))
    return clone


def _rebuild_hint(model: keras.Model, why: str) -> str:
    return (
        f"Cannot rebuild model {model.name!r} ({type(model).__name__}) from its config: {why}. "
        "Fix: give the model (and each custom layer) a get_config() that returns every "
        "__init__ argument and, if __init__ needs objects, a classmethod from_config(config); "
        "register custom classes with @keras.saving.register_keras_serializable()."
    )


def _set_config_policies(config: dict[str, Any], layer: keras.layers.Layer, policy_of: PolicyFn) -> None:
    inner = config.get("config", {})
    if isinstance(layer, keras.layers.InputLayer):
        return
    policy = policy_of(layer)
    if policy is not None and isinstance(inner, dict) and "dtype" in inner:
        inner["dtype"] = policy
    if isinstance(layer, keras.Model) and (isinstance(layer, keras.Sequential) or _is_functional(layer)):
        for sub_config in inner.get("layers", []):
            name = sub_config.get("config", {}).get("name")
            sub = _find_layer(layer, name)
            if sub is not None:
                _set_config_policies(sub_config, sub, policy_of)


def _find_layer(model: keras.Model, name: str | None) -> keras.layers.Layer | None:
    for sub in model._flatten_layers(include_self=False, recursive=False):
        if sub.name == name:
            return sub
    return None


def _set_unbuilt_policies(clone: keras.Model, source: keras.Model, policy_of: PolicyFn) -> None:
    pairs = list(zip(iter_layers(clone), iter_layers(source)))
    for new, old in pairs:
        if type(new) is not type(old):
            return  # a different construction order: the config policies must do
        policy = policy_of(old)
        if policy is not None and not new.built and not isinstance(new, keras.layers.InputLayer):
            new.dtype_policy = policy


def _build_like(clone: keras.Model, source: keras.Model, build_config: dict[str, Any] | None) -> None:
    if not clone.built:
        if build_config is None:
            raise RebuildError(_rebuild_hint(source, "its config carries no input shape to build it from"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Keras' note on models without build()
            clone.build_from_config(build_config)
    shape = (build_config or {}).get("input_shape")
    if len(clone.weights) < len(source.weights) and _is_shape(shape):
        # A subclassed model whose build() does not create its sub-layers'
        # variables: one forward pass on zeros creates them.
        clone(keras.ops.zeros((1, *shape[1:])), training=False)
    if not clone.built and len(clone.weights) == len(source.weights):
        clone.built = True  # all variables exist; mark it as Keras' own build() would


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, (list, tuple)) and len(shape) > 1 and all(isinstance(d, int) for d in shape[1:])


def _check_same_variables(source: keras.Model, clone: keras.Model) -> None:
    old, new = source.weights, clone.weights
    if [tuple(v.shape) for v in old] != [tuple(v.shape) for v in new]:
        raise RebuildError(
            _rebuild_hint(
                source,
                f"the rebuilt model has {len(new)} variables with shapes that differ from "
                f"the source's {len(old)}",
            )
        )
