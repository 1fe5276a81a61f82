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
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from fp16cont import _keras_compat as compat
from fp16cont.errors import ModelNotBuiltError, RebuildError
from fp16cont.numerics import is_low_float, numpy_dtype

__all__ = [
    "PolicyFn",
    "iter_layers",
    "child_layers",
    "output_layers",
    "clone_with_policies",
    "check_built",
    "compile_config",
    "copy_model",
    "effective_policy",
    "Float32Initializer",
]

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
        ['InputLayer', 'Dense']
    """
    yield from compat.flatten_layers(model, recursive=True)


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
    if is_subclassed(model):
        return []
    if isinstance(model, keras.Sequential):
        found = model.layers[-1:] if model.layers else []
    else:
        found = [compat.producing_layer(t) for t in keras.tree.flatten(model.outputs)]
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


def compile_config(model: keras.Model) -> dict[str, Any]:
    """The model's compile settings (loss, metrics, optimizer...), empty when it is not compiled.

    Args:
        model: A Keras model.

    Returns:
        ``model.get_compile_config()`` of a compiled model, else ``{}``.

    Example:
        >>> compile_config(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
        {}
    """
    if not getattr(model, "compiled", False):
        return {}
    return dict(model.get_compile_config() or {})


def copy_model(model: keras.Model, policy_of: PolicyFn = lambda layer: None) -> keras.Model:
    """A new model with ``policy_of(layer)`` per layer and the source's weights.

    Each value is cast to its new variable's dtype (exact for float32 copies
    and for widening 16-bit to float32). The copy is uncompiled; the source
    is only read.

    Args:
        model: A built model.
        policy_of: As in :func:`clone_with_policies`; the default keeps every
            layer's policy.

    Returns:
        The copy.

    Raises:
        ModelNotBuiltError: If ``model`` is not built.
        RebuildError: If the architecture cannot be rebuilt from its config.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> copy_model(m, lambda layer: "float32").layers[0].kernel.dtype
        'float32'
    """
    copy = clone_with_policies(model, policy_of)
    for target, variable in zip(copy.weights, model.weights):
        value = np.array(variable.numpy())  # a host copy (also of a distributed variable)
        target.assign(value.astype(numpy_dtype(target.dtype)) if "float" in str(target.dtype) else value)
    return copy


def clone_with_policies(model: keras.Model, policy_of: PolicyFn) -> keras.Model:
    """Rebuild ``model`` from its config with ``policy_of(layer)`` per layer.

    Every layer config nested anywhere in the model's config (wrapper layers'
    ``layer`` entries, KerasHub ``backbone`` entries, nested models) gets a
    :class:`keras.dtype_policies.DTypePolicyMap` that names each layer's
    policy by its path, and the same map is the dtype policy in force while
    the config is deserialized (restored afterwards), so layers that a
    constructor creates from its arguments (KerasHub backbones, subclassed
    models) follow the plan too. Initializers run in float32 and are cast
    (TensorFlow has no bfloat16 QR for ``Orthogonal``); their values are
    overwritten by the caller anyway.

    Weights are not copied: the clone has fresh variables in the new dtypes.

    Args:
        model: A built Sequential, Functional or subclassed model (with
            ``get_config``/``from_config``), custom registered layers and
            KerasHub models included.
        policy_of: Returns the dtype policy name for a source layer, or
            ``None`` to keep the layer's config as it is.

    Returns:
        The new, built, uncompiled model.

    Raises:
        ModelNotBuiltError: If ``model`` is not built.
        RebuildError: If the architecture cannot be rebuilt from its config.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> clone_with_policies(m, lambda layer: "float16").layers[0].kernel.dtype
        'float16'
    """
    from fp16cont.convert.lora import copy_lora  # here: lora walks layers with this module

    check_built(model)
    config = _serialize(model)
    build_config = config.pop("build_config", None)
    config.pop("compile_config", None)
    sources = [layer for layer in iter_layers(model) if not isinstance(layer, keras.layers.InputLayer)]
    planned = {id(layer): _policy_name(policy_of(layer)) for layer in sources}
    if all(p is None for p in planned.values()):
        clone = _deserialize(model, config)
        _build_like(clone, model, build_config)
        copy_lora(model, clone)
        _check_same_variables(model, clone)
        return clone
    main = _main_policy(planned)
    _rewrite_config(config, model, {**planned, id(model): main}, main)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(main)  # scoped: restored below (Keras keeps it per thread)
    try:
        clone = _deserialize(model, config)
        _set_unbuilt_policies(clone, model, planned)
        _build_like(clone, model, build_config)
    finally:
        keras.config.set_dtype_policy(previous)
    _restore_initializers(clone)
    copy_lora(model, clone)  # a config keeps no LoRA adapters nor frozen flags
    _check_same_variables(model, clone)
    _settle_policies(clone)
    return clone


def effective_policy(layer: keras.layers.Layer) -> keras.DTypePolicy:
    """The dtype policy a layer really runs with (a policy map resolved by path).

    Args:
        layer: A Keras layer.

    Returns:
        A plain ``keras.DTypePolicy``.

    Example:
        >>> effective_policy(keras.layers.Dense(2, dtype="bfloat16")).name
        'bfloat16'
    """
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return policy[layer.path] if layer.path else policy.default_policy
    return policy


def _policy_name(policy: Any) -> str | None:
    if policy is None:
        return None
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return policy.default_policy.name
    name = policy.name if isinstance(policy, keras.DTypePolicy) else str(policy)
    return name[len("map_") :] if name.startswith("map_") else name


def _main_policy(planned: dict[int, str | None]) -> str:
    names = [p for p in planned.values() if p is not None]
    return max(sorted(set(names)), key=names.count)


def _container_policy(layer: keras.layers.Layer, planned: dict[int, str | None], default: str) -> Any:
    """A plain policy, or a policy map naming the islands among the layer's
    descendants by path suffix (paths differ between a model built in code
    and one built from its config, suffixes below the container do not)."""
    rels: dict[str, str] = {}
    for sub in iter_layers(layer):
        policy = planned.get(id(sub))
        if policy is None or policy == default or not sub.path:
            continue
        path = sub.path
        if layer.path and path.startswith(layer.path + "/"):
            path = path[len(layer.path) + 1 :]
        rels.setdefault(path, policy)
    if not rels:
        return keras.dtype_policies.serialize(keras.DTypePolicy(default))
    entries = {}
    for rel, policy in rels.items():
        nested = any(other != rel and other.endswith("/" + rel) for other in rels)
        key = re.escape(rel) if nested else "(?:.*/)?" + re.escape(rel)
        entries[key] = keras.DTypePolicy(policy)
    return keras.dtype_policies.serialize(keras.dtype_policies.DTypePolicyMap(keras.DTypePolicy(default), entries))


_FLOAT_POLICIES = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16", "float64")
_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy", "DTypePolicyMap")


def _is_float_policy(value: Any) -> bool:
    # a layer serializes its policy as a dict; a plain string is an op's
    # argument (keras.ops.cast's target dtype) or an input's dtype
    if isinstance(value, dict) and value.get("class_name") in _POLICY_CLASSES:
        inner = value.get("config", {})
        if value.get("class_name") == "DTypePolicyMap":
            return True
        return isinstance(inner, dict) and inner.get("name") in _FLOAT_POLICIES
    return False


def child_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The direct sub-layers of ``layer`` (empty for a leaf layer).

    Args:
        layer: A Keras layer or model.

    Returns:
        The sub-layers one level down.

    Example:
        >>> child_layers(keras.layers.Dense(2))
        []
    """
    return compat.flatten_layers(layer, recursive=False)


def _rewrite_config(node: Any, layer: keras.layers.Layer | None, planned: dict[int, str | None], inherited: Any) -> None:
    """Set the ``dtype`` of every layer config nested in ``node``.

    ``layer`` is the source layer that ``node`` serializes, when known: a
    Sequential/Functional model's layers are matched by name, a leaf layer
    gets its planned policy, and a container (wrapper, KerasHub model,
    custom layer with sub-layers) gets a policy for everything built inside
    it; configs nested in a container get that same policy. Initializers are
    wrapped to run in float32.
    """
    if isinstance(node, list):
        for item in node:
            _rewrite_config(item, None, planned, inherited)
        return
    if not isinstance(node, dict) or node.get("class_name") in _POLICY_CLASSES:
        return
    inner = node.get("config")
    if not ("class_name" in node and isinstance(inner, dict)):
        for value in node.values():
            _rewrite_config(value, None, planned, inherited)
        return
    own = inherited
    if layer is not None and planned.get(id(layer)) is not None:
        policy = planned[id(layer)]
        own = _container_policy(layer, planned, policy) if child_layers(layer) else policy
    if node["class_name"] != "InputLayer" and _is_float_policy(inner.get("dtype")):
        inner["dtype"] = copy.deepcopy(own)
    for key, value in inner.items():
        if key.endswith("_initializer") and value is not None and not _is_wrapped(value):
            inner[key] = {"module": __name__, "class_name": "Float32Initializer",
                          "config": {"initializer": value}, "registered_name": _FLOAT32_INIT}
    if layer is not None and _is_graph_model(layer) and isinstance(inner.get("layers"), list):
        by_name = {sub.name: sub for sub in child_layers(layer)}
        for sub_config in inner["layers"]:
            name = sub_config.get("config", {}).get("name") if isinstance(sub_config, dict) else None
            _rewrite_config(sub_config, by_name.get(name), planned, own)
        rest = {k: v for k, v in inner.items() if k != "layers"}
    else:
        rest = inner
    for key, value in rest.items():
        if key != "dtype":
            _rewrite_config(value, None, planned, own)


def _is_wrapped(value: Any) -> bool:
    return isinstance(value, dict) and _FLOAT32_INIT in (value.get("class_name"), value.get("registered_name"))


_FLOAT32_INIT = "fp16cont>Float32Initializer"


@keras.saving.register_keras_serializable(package="fp16cont", name="Float32Initializer")
class Float32Initializer(keras.initializers.Initializer):
    """Runs an initializer in float32 and casts the result to the variable dtype.

    Used only while a model is rebuilt; the original initializers are put back
    afterwards, so saved configs never name this class.

    Args:
        initializer: The wrapped initializer (object, name or config).

    Example:
        >>> init = Float32Initializer("orthogonal")
        >>> keras.backend.standardize_dtype(init((2, 2), "bfloat16").dtype)
        'bfloat16'
    """

    def __init__(self, initializer: Any):
        self.initializer = keras.initializers.get(initializer)

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        dtype = dtype or keras.config.floatx()
        if "float" not in str(dtype):
            return self.initializer(shape, dtype=dtype)
        return keras.ops.cast(self.initializer(shape, dtype="float32"), dtype)

    def get_config(self) -> dict[str, Any]:
        return {"initializer": keras.initializers.serialize(self.initializer)}


def _restore_initializers(clone: keras.Model) -> None:
    """Put the original initializers back, except an ``Orthogonal`` one in a
    16-bit layer: keeping it wrapped lets ``keras.saving.load_model`` rebuild
    the saved 16-bit model (with fp16cont imported) on TensorFlow, which has
    no bfloat16 QR kernel."""
    for layer in [clone, *iter_layers(clone)]:
        low = any(str(v.dtype) in ("float16", "bfloat16") for v in layer.weights)
        for name, value in list(vars(layer).items()):
            if isinstance(value, Float32Initializer) and not (low and _needs_float32(value.initializer)):
                object.__setattr__(layer, name, value.initializer)


def _needs_float32(initializer: Any) -> bool:
    return "orthogonal" in type(initializer).__name__.lower()


def _settle_policies(clone: keras.Model) -> None:
    """Give each layer that holds a policy map its resolved plain policy;
    containers whose config is constructor arguments keep theirs, so that a
    saved and reloaded model keeps its islands."""
    for layer in [clone, *iter_layers(clone)]:
        if isinstance(layer.dtype_policy, keras.dtype_policies.DTypePolicyMap):
            if not child_layers(layer) or _is_graph_model(layer):
                compat.set_layer_policy(layer, effective_policy(layer))  # a shared map stays intact


def policies_lost_on_reload(model: keras.Model) -> list[str]:
    """The layers whose dtype policy a config round trip (``keras.models.load_model``) would not restore.

    Sequential and Functional models (KerasHub tasks included) keep every
    layer's policy in their config. A subclassed model is rebuilt by its own
    constructor, which creates its layers with the policy in force at load
    time (float32) unless it passes one on. The model is constructed once more
    from its config, without building it, and the policies compared.

    Args:
        model: A model from :func:`clone_with_policies`.

    Returns:
        The paths (or names) of the layers that would come back with another
        variable dtype; empty when the policies survive or the model cannot
        be constructed from its config (then it cannot be saved either).

    Example:
        >>> m = clone_with_policies(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), lambda l: "bfloat16")
        >>> policies_lost_on_reload(m)
        []
    """
    if not is_subclassed(model):
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = _deserialize(model, _serialize(model))
    except RebuildError:  # a get_config/from_config that fails: not savable as a config either
        return []
    mine = [layer for layer in iter_layers(model) if not isinstance(layer, keras.layers.InputLayer)]
    theirs = [layer for layer in iter_layers(probe) if not isinstance(layer, keras.layers.InputLayer)]
    if len(mine) != len(theirs):
        return [layer.path or layer.name for layer in mine if is_low_float(effective_policy(layer).variable_dtype)]
    return [
        a.path or a.name
        for a, b in zip(mine, theirs)
        if effective_policy(a).variable_dtype != effective_policy(b).variable_dtype
    ]


def is_subclassed(model: keras.layers.Layer) -> bool:
    """Whether ``model`` is neither Sequential nor Functional: its config does not list its layers.

    Example:
        >>> is_subclassed(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
        False
    """
    return not (isinstance(model, keras.Sequential) or _is_functional(model))


def _is_graph_model(layer: keras.layers.Layer) -> bool:
    """A plain Sequential/Functional model, whose config lists each layer's own dtype."""
    return isinstance(layer, keras.Sequential) or (
        _is_functional(layer)
        and getattr(type(layer).from_config, "__func__", None) is keras.Model.from_config.__func__
    )


def _is_functional(model: keras.layers.Layer) -> bool:
    return compat.is_functional(model)


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
        "register custom classes with @keras.saving.register_keras_serializable(). If the "
        "error comes from a layer's computation in 16-bit (an op without a 16-bit kernel), "
        "keep that layer in float32: keep_float32=(..., LayerClass) or a name pattern."
    )


def _set_unbuilt_policies(clone: keras.Model, source: keras.Model, planned: dict[int, str | None]) -> None:
    # layers a subclassed model creates in __init__ are unbuilt after
    # from_config: their policy can still be set, paired by position
    pairs = list(zip(iter_layers(clone), iter_layers(source)))
    for new, old in pairs:
        if type(new) is not type(old):
            return  # a different construction order: the policy map must do
        policy = planned.get(id(old))
        if policy is not None and not new.built and not isinstance(new, keras.layers.InputLayer):
            compat.set_layer_policy(new, keras.DTypePolicy(policy))  # never edit a shared map


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
