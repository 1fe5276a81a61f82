"""LoRA on 16-bit models: carry adapters through a rebuild, choose their dtype, freeze the rest.

Keras' ``layer.enable_lora(rank)`` (and KerasHub's ``backbone.enable_lora(rank)``,
which calls it on the attention query and value layers and freezes every
other backbone layer) adds two low-rank adapter variables per layer and
freezes the layer's kernel. Keras 3 always creates the adapters in float32.
On a pure 16-bit model fp16cont makes them 16-bit too ("pure LoRA": the
adapters and their optimizer state in the model's 16-bit format, updated
with compensation, stochastic rounding by default), or keeps them float32 on
request (``lora_precision="float32"``: mixed-precision LoRA, float32 adapters
on a frozen 16-bit backbone). Either way the adapted layer's kernel plus its
low-rank update is rounded to the layer's compute dtype before the matrix
product, as in Keras.

Example:
    >>> backbone.enable_lora(4)  # doctest: +SKIP
    >>> summary = prepare_lora(model16)  # doctest: +SKIP
    >>> print(summary.describe())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from fp16cont import _keras_compat as compat
from fp16cont.convert.architecture import iter_layers
from fp16cont.errors import InvalidArgumentError

__all__ = ["ADAPTER_ATTRIBUTES", "LORA_PRECISIONS", "LoraSummary", "lora_layers", "copy_lora", "prepare_lora"]

ADAPTER_ATTRIBUTES = ("lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b")
LORA_PRECISIONS = ("auto", "float32")


@dataclass(frozen=True)
class LoraSummary:
    """What trains in a LoRA model, in which dtype.

    Attributes:
        layers: Paths of the LoRA-enabled layers.
        ranks: Their LoRA ranks, one per layer.
        adapter_dtype: Dtype of the adapters (``"mixed"`` if they differ).
        adapter_parameters: Values in the adapters.
        other_trainable: ``(path, dtype, values)`` of every other trainable
            variable (a classifier head, say).
        frozen_parameters: Values of the frozen floating-point variables.
        frozen_dtypes: ``(dtype, values)`` of the frozen variables.
        converted: Adapter variables whose dtype this call changed.
        frozen_now: Paths of variables of LoRA layers this call froze (the
            biases KerasHub's ``enable_lora`` leaves trainable).
    """

    layers: tuple[str, ...]
    ranks: tuple[int, ...]
    adapter_dtype: str
    adapter_parameters: int
    other_trainable: tuple[tuple[str, str, int], ...]
    frozen_parameters: int
    frozen_dtypes: tuple[tuple[str, int], ...]
    converted: tuple[str, ...] = ()
    frozen_now: tuple[str, ...] = ()

    def describe(self) -> str:
        """One paragraph: adapters, their dtype, what else trains, what is frozen.

        Example:
            >>> LoraSummary(("q",), (4,), "bfloat16", 64, (), 1000, (("bfloat16", 1000),)).describe()[:40]
            'LoRA rank 4 on 1 layer(s): 64 adapter pa'
        """
        ranks = sorted(set(self.ranks))
        rank = str(ranks[0]) if len(ranks) == 1 else "/".join(map(str, ranks))
        frozen = ", ".join(f"{n:,} {d}" for d, n in self.frozen_dtypes)
        text = (
            f"LoRA rank {rank} on {len(self.layers)} layer(s): {self.adapter_parameters:,} adapter parameters "
            f"train in {self.adapter_dtype}; {self.frozen_parameters:,} parameters frozen ({frozen})"
        )
        if self.other_trainable:
            others = sum(n for _, _, n in self.other_trainable)
            dtypes = sorted({d for _, d, _ in self.other_trainable})
            text += f"; {others:,} other parameters also train ({', '.join(dtypes)}: {self.other_trainable[0][0]}, ...)"
        if self.frozen_now:
            text += f"; froze {len(self.frozen_now)} bias variable(s) of the LoRA layers"
        return text


def lora_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The LoRA-enabled layers of ``model``, anywhere in its tree.

    Args:
        model: A Keras model.

    Returns:
        The layers with ``lora_enabled``, each once.

    Example:
        >>> lora_layers(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
        []
    """
    found: list[keras.layers.Layer] = []
    for layer in iter_layers(model):
        if getattr(layer, "lora_enabled", False) and all(layer is not f for f in found):
            found.append(layer)
    return found


def copy_lora(source: keras.Model, rebuilt: keras.Model) -> int:
    """Enable LoRA on ``rebuilt`` where ``source`` has it, and copy trainable flags.

    A model rebuilt from its config loses LoRA (KerasHub backbones keep only
    their constructor arguments) and the frozen flags ``enable_lora`` set.
    Layers are matched by path. The new adapters take the rebuilt layer's
    variable dtype (16-bit in a pure 16-bit model); their values are loaded
    afterwards with the other weights.

    Args:
        source: The float32 source model.
        rebuilt: The model rebuilt from the source's config, same paths.

    Returns:
        The number of layers LoRA was enabled on.

    Example:
        >>> copy_lora(m, keras.models.clone_model(m))  # doctest: +SKIP
        0
    """
    layers = lora_layers(source)
    if not layers:
        return 0
    by_path = {layer.path: layer for layer in iter_layers(rebuilt)}
    for old in layers:
        new = by_path.get(old.path)
        if new is None or getattr(new, "lora_enabled", False):
            continue
        new.enable_lora(old.lora_rank, lora_alpha=old.lora_alpha)
        _set_adapter_dtype(new, new.variable_dtype)
    for old in iter_layers(source):
        new = by_path.get(old.path)
        if new is not None and new.trainable != old.trainable:
            new.trainable = old.trainable
    flags = {v.path: v.trainable for v in source.weights}
    for v in rebuilt.weights:
        if v.path in flags and v.trainable != flags[v.path]:
            v.trainable = flags[v.path]
    return len(layers)


def prepare_lora(model: keras.Model, lora_precision: str = "auto") -> LoraSummary | None:
    """Give a LoRA model's adapters the wanted dtype and freeze everything else of its LoRA layers.

    Args:
        model: A built model, LoRA enabled before or after
            :func:`~fp16cont.build_fp16_model`.
        lora_precision: ``"auto"``: adapters in their layer's variable dtype
            (16-bit in a pure 16-bit model: pure LoRA, updated with the
            training's compensation); ``"float32"``: float32 adapters on the
            16-bit frozen layers (mixed-precision LoRA).

    Returns:
        A :class:`LoraSummary`, or ``None`` when no layer has LoRA.

    Raises:
        InvalidArgumentError: For another ``lora_precision``, or
            ``"float32"`` on a model without LoRA.

    Example:
        >>> prepare_lora(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])) is None
        True
    """
    if not isinstance(lora_precision, str) or lora_precision not in LORA_PRECISIONS:
        raise InvalidArgumentError(
            f"Argument `lora_precision` should be 'auto' or 'float32'. Received: lora_precision={lora_precision!r}. "
            "Fix: 'auto' trains LoRA adapters in the model's 16-bit format (pure LoRA); 'float32' keeps them "
            "float32 on the frozen 16-bit layers (mixed-precision LoRA)."
        )
    layers = lora_layers(model)
    if not layers:
        if lora_precision != "auto":
            raise InvalidArgumentError(
                f"Argument `lora_precision={lora_precision!r}` sets the dtype of LoRA adapters, but model "
                f"{model.name!r} has no LoRA-enabled layer. Fix: enable LoRA first (KerasHub: "
                "model.backbone.enable_lora(rank); a Keras layer: layer.enable_lora(rank)), or leave "
                "lora_precision='auto'."
            )
        return None
    converted: list[str] = []
    frozen_now: list[str] = []
    for layer in layers:
        wanted = "float32" if lora_precision == "float32" else str(layer.variable_dtype)
        converted.extend(_set_adapter_dtype(layer, wanted))
        adapters = {id(v) for v in _adapters(layer)}
        for v in layer.trainable_weights:
            if id(v) not in adapters:
                v.trainable = False
                frozen_now.append(v.path)
    return summarize(model, tuple(converted), tuple(frozen_now))


def summarize(model: keras.Model, converted: tuple[str, ...] = (), frozen_now: tuple[str, ...] = ()) -> LoraSummary:
    """The :class:`LoraSummary` of a LoRA model as it is now (no changes).

    Args:
        model: A model with LoRA-enabled layers.
        converted: Adapter paths whose dtype was just changed.
        frozen_now: Variable paths just frozen.

    Returns:
        The summary.
    """
    layers = lora_layers(model)
    adapters = [v for layer in layers for v in _adapters(layer)]
    adapter_ids = {id(v) for v in adapters}
    dtypes = {str(v.dtype) for v in adapters}
    others = tuple(
        (v.path, str(v.dtype), _size(v)) for v in model.trainable_weights if id(v) not in adapter_ids
    )
    frozen: dict[str, int] = {}
    for v in model.non_trainable_weights:
        if "float" in str(v.dtype):
            frozen[str(v.dtype)] = frozen.get(str(v.dtype), 0) + _size(v)
    return LoraSummary(
        layers=tuple(layer.path for layer in layers),
        ranks=tuple(int(layer.lora_rank) for layer in layers),
        adapter_dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
        adapter_parameters=sum(_size(v) for v in adapters if v.trainable),
        other_trainable=others,
        frozen_parameters=sum(frozen.values()),
        frozen_dtypes=tuple(sorted(frozen.items(), key=lambda kv: -kv[1])),
        converted=converted,
        frozen_now=frozen_now,
    )


def _adapters(layer: keras.layers.Layer) -> list[Any]:
    return [getattr(layer, a) for a in ADAPTER_ATTRIBUTES if getattr(layer, a, None) is not None]


def _set_adapter_dtype(layer: keras.layers.Layer, dtype: str) -> list[str]:
    changed = []
    for attribute in ADAPTER_ATTRIBUTES:
        variable = getattr(layer, attribute, None)
        if variable is not None and str(variable.dtype) != dtype:
            changed.append(compat.replace_variable(layer, attribute, dtype).path)
    return changed


def _size(variable: Any) -> int:
    return int(np.prod(variable.shape))
