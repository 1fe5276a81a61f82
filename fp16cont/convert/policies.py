"""Choose a dtype policy for each layer: the 16-bit body and float32 islands.

Islands keep numerically sensitive parts in float32: normalization layers
keep float32 statistics and parameters (``mixed_<16-bit>`` policy: float32
variables, 16-bit compute), and the output layers run fully in float32 so that
the loss is computed in float32.

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    >>> plan = policy_plan(m, "bfloat16", "pure")
    >>> plan(m.get_layer("head"))
    'float32'
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from collections.abc import Collection, Sequence
from typing import Literal, Union

import keras

from fp16cont.convert.architecture import child_layers, is_subclassed, iter_layers, output_layers
from fp16cont.errors import InvalidArgumentError
from fp16cont.numerics import LowPrecision

__all__ = [
    "Island",
    "Mode",
    "DEFAULT_ISLANDS",
    "NORMALIZATION_LAYERS",
    "policy_plan",
    "check_islands",
    "is_output_embedding",
    "is_normalization",
    "PolicyPlan",
]

Island = Union[str, type]
Mode = Literal["pure", "mixed"]
DEFAULT_ISLANDS: tuple[Island, ...] = ("normalization", "output")
NORMALIZATION_LAYERS: tuple[type, ...] = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "Normalization",
        "SpectralNormalization",
    )
    if hasattr(keras.layers, name)
)
_TOKENS = ("normalization", "output")
# KerasHub's own RMS/layer norms (LlamaLayerNorm, Gemma's RMSNormalization,
# MistralLayerNormalization, QwenLayerNorm, Qwen3LayerNorm, Phi3LayerNorm, ...)
# subclass keras.layers.Layer directly; they are recognized by class name.
_NORM_CLASS_NAME = re.compile(r"Norm(alization)?(\dd)?$")


def check_islands(keep_float32: Sequence[Island] | None) -> tuple[Island, ...]:
    """Validate ``keep_float32`` entries.

    Args:
        keep_float32: ``"normalization"``, ``"output"``, layer-name glob
            patterns (``"head*"``) and ``keras.layers.Layer`` subclasses; ``None``
            or ``()`` for no islands.

    Returns:
        The entries as a tuple.

    Raises:
        InvalidArgumentError: For entries of any other type.

    Example:
        >>> check_islands(["output", keras.layers.Embedding])[0]
        'output'
    """
    if keep_float32 is None:
        return ()
    if isinstance(keep_float32, (str, type)):
        keep_float32 = (keep_float32,)
    if not isinstance(keep_float32, (list, tuple, set, frozenset)):
        raise InvalidArgumentError(
            "Argument `keep_float32` should be None, an entry or a sequence of entries ('normalization', "
            f"'output', layer name or path patterns, keras.layers.Layer subclasses). Received: {keep_float32!r}. "
            "Fix: e.g. keep_float32=('normalization', 'output')."
        )
    entries = tuple(keep_float32)
    for entry in entries:
        if not (isinstance(entry, str) or (isinstance(entry, type) and issubclass(entry, keras.layers.Layer))):
            raise InvalidArgumentError(
                "Argument `keep_float32` should hold 'normalization', 'output', layer name or "
                f"path patterns or keras.layers.Layer subclasses. Received: {entry!r}. Fix: e.g. "
                "keep_float32=('normalization', 'output', keras.layers.Embedding, 'head*')."
            )
    return entries


@dataclass(frozen=True)
class PolicyPlan:
    """The dtype policy of each source layer, and why a layer is an island.

    Call it with a source layer to get its policy name; :meth:`reason` says
    why a layer is kept in float32 (``None`` for the 16-bit body).

    Attributes:
        main: The policy of the body (``"bfloat16"``, ``"mixed_float16"``...).
        reasons: ``id(layer) -> reason`` for every island layer.
        policies: ``id(layer) -> policy`` for every island layer.
    """

    main: str
    reasons: dict[int, str] = field(default_factory=dict)
    policies: dict[int, str] = field(default_factory=dict)

    def __call__(self, layer: keras.layers.Layer) -> str:
        return self.policies.get(id(layer), self.main)

    def reason(self, layer: keras.layers.Layer) -> str | None:
        """Why ``layer`` is an island, or ``None`` when it is in the body."""
        return self.reasons.get(id(layer))


def policy_plan(
    model: keras.Model,
    precision: LowPrecision,
    mode: Mode,
    keep_float32: Sequence[Island] | None = DEFAULT_ISLANDS,
    float32_variables: Collection[str] = (),
) -> PolicyPlan:
    """Return the plan that names the dtype policy of each source layer.

    Every layer anywhere in the tree is planned: layers of nested models,
    of wrapper layers (``Bidirectional``, ``TimeDistributed``) and of
    KerasHub backbones and tasks. Patterns match a layer's name or its path
    (``"transformer_layer_*/self_attention*"``).

    Args:
        model: The float32 source model.
        precision: ``"float16"`` or ``"bfloat16"``.
        mode: ``"pure"`` (16-bit variables and compute) or ``"mixed"``
            (float32 variables, 16-bit compute).
        keep_float32: Island entries, see :func:`check_islands`.
        float32_variables: Variable paths that must stay float32; their layers
            run fully in float32.

    Returns:
        A :class:`PolicyPlan`, a function from a source layer to its policy name.

    Raises:
        InvalidArgumentError: For bad ``keep_float32`` entries.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
        >>> plan = policy_plan(m, "bfloat16", "pure")
        >>> plan(m.get_layer("head")), plan.reason(m.get_layer("head"))
        ('float32', 'output layer')
    """
    entries = check_islands(keep_float32)
    main = precision if mode == "pure" else f"mixed_{precision}"
    classes = tuple(e for e in entries if isinstance(e, type))
    patterns = tuple(e for e in entries if isinstance(e, str) and e not in _TOKENS)
    outputs = [o for o in output_layers(model) if not is_output_embedding(o)] if "output" in entries else []
    if "output" in entries:
        _warn_if_output_unknown(model, precision)
    norm = "normalization" in entries
    forced = _layers_owning(model, set(float32_variables))
    plan = PolicyPlan(main)
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        reason, policy = _island(layer, outputs, forced, classes, patterns, norm, precision)
        if reason is not None and id(layer) not in plan.reasons:
            plan.reasons[id(layer)] = reason
            plan.policies[id(layer)] = policy
            if policy == "float32":  # a float32 container: everything inside it too
                for sub in iter_layers(layer):
                    plan.reasons.setdefault(id(sub), f"inside {layer.path or layer.name} ({reason})")
                    plan.policies.setdefault(id(sub), "float32")
    return plan


def _warn_if_output_unknown(model: keras.Model, precision: str) -> None:
    """A subclassed model does not say which layer makes its output: the ``"output"`` island cannot be placed."""
    if not is_subclassed(model) or not model.layers:
        return
    last = model.layers[-1].name
    warnings.warn(
        f"keep_float32 names the 'output' island, but {model.name!r} is a subclassed model, which does not say "
        f"which layer produces its output: every layer trains in {precision}, the output layer included. Fix: name "
        f"it, e.g. keep_float32=('normalization', {last!r}) if {last!r} is the output layer.",
        UserWarning,
        stacklevel=4,
    )


def is_output_embedding(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is an embedding that also produces the logits (``ReversibleEmbedding``).

    The ``"output"`` island skips such a layer: its table is the model's input
    embedding too (GPT-2, Gemma: tied; Llama: a second table in the same
    layer), often the largest single variable, and the logits it computes are
    rounded to 16-bit just as in Keras' mixed precision while the loss still
    runs in float32. Measured on a byte-level GPT-2 continued on real text
    (``benchmarks/lm_continued.py``), the 16-bit table matches float32's held-out
    loss; keeping it float32 costs bytes and speed. To keep it float32 anyway,
    name it: ``keep_float32=(..., "token_embedding")``.

    Args:
        layer: A layer of the source model.

    Returns:
        ``True`` for a ``ReversibleEmbedding`` (Keras' or KerasHub's).

    Example:
        >>> is_output_embedding(keras.layers.Dense(2))
        False
    """
    return any(cls.__name__ == "ReversibleEmbedding" for cls in type(layer).__mro__)


def is_normalization(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is a normalization layer that the ``"normalization"`` island keeps.

    Keras' normalization layers (``LayerNormalization``, ``RMSNormalization``,
    ``BatchNormalization``, ...) and the leaf layers whose class name ends in
    ``Norm`` or ``Normalization``: the RMS norms KerasHub's language models
    define for themselves (``LlamaLayerNorm``, Gemma's ``RMSNormalization``,
    ``MistralLayerNormalization``, ``QwenLayerNorm``, ``Qwen3LayerNorm``,
    ``Phi3LayerNorm``...). A layer with sub-layers (a block that holds a
    convolution or a dense layer next to its norm) is not one: its
    sub-layers are planned on their own.

    Args:
        layer: A layer of the source model.

    Returns:
        ``True`` for a normalization layer.

    Example:
        >>> is_normalization(keras.layers.LayerNormalization()), is_normalization(keras.layers.Dense(2))
        (True, False)
    """
    if isinstance(layer, NORMALIZATION_LAYERS):
        return True
    if child_layers(layer):
        return False
    return any(
        _NORM_CLASS_NAME.search(cls.__name__) is not None
        for cls in type(layer).__mro__
        if isinstance(cls, type) and issubclass(cls, keras.layers.Layer) and cls is not keras.layers.Layer
    )


def _island(layer, outputs, forced, classes, patterns, norm, precision) -> tuple[str | None, str]:
    if any(layer is f for f in forced):
        return "weights kept float32 (on_overflow='keep_float32')", "float32"
    if any(layer is o for o in outputs):
        return "output layer", "float32"
    if isinstance(layer, classes):
        return f"keep_float32 class {type(layer).__name__}", "float32"
    names = (layer.name, layer.path or layer.name)
    hit = next((p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)), None)
    if hit is not None:
        return f"keep_float32 pattern {hit!r}", "float32"
    if norm and is_normalization(layer):
        return "normalization (float32 statistics)", f"mixed_{precision}"
    return None, ""


def _layers_owning(model: keras.Model, paths: set[str]) -> list[keras.layers.Layer]:
    if not paths:
        return []
    leaves = [l for l in iter_layers(model) if not child_layers(l)]
    return [l for l in leaves if any(v.path in paths for v in l.weights)]
