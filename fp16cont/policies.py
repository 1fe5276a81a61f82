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
from collections.abc import Collection, Sequence
from typing import Literal, Union

import keras

from fp16cont.architecture import PolicyFn, iter_layers, output_layers
from fp16cont.errors import InvalidArgumentError
from fp16cont.numerics import LowPrecision

__all__ = ["Island", "Mode", "DEFAULT_ISLANDS", "NORMALIZATION_LAYERS", "policy_plan", "check_islands"]

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
    entries = tuple(keep_float32)
    for entry in entries:
        if not (isinstance(entry, str) or (isinstance(entry, type) and issubclass(entry, keras.layers.Layer))):
            raise InvalidArgumentError(
                "Argument `keep_float32` should hold 'normalization', 'output', layer-name "
                f"patterns or keras.layers.Layer subclasses. Received: {entry!r}. Fix: e.g. "
                "keep_float32=('normalization', 'output', keras.layers.Embedding, 'head*')."
            )
    return entries


def policy_plan(
    model: keras.Model,
    precision: LowPrecision,
    mode: Mode,
    keep_float32: Sequence[Island] | None = DEFAULT_ISLANDS,
    float32_variables: Collection[str] = (),
) -> PolicyFn:
    """Return the function that names the dtype policy of each source layer.

    Args:
        model: The float32 source model.
        precision: ``"float16"`` or ``"bfloat16"``.
        mode: ``"pure"`` (16-bit variables and compute) or ``"mixed"``
            (float32 variables, 16-bit compute).
        keep_float32: Island entries, see :func:`check_islands`.
        float32_variables: Variable paths that must stay float32; their layers
            run fully in float32.

    Returns:
        A function from a source layer to its policy name.

    Raises:
        InvalidArgumentError: For bad ``keep_float32`` entries.
    """
    entries = check_islands(keep_float32)
    main = precision if mode == "pure" else f"mixed_{precision}"
    classes = tuple(e for e in entries if isinstance(e, type))
    patterns = tuple(e for e in entries if isinstance(e, str) and e not in _TOKENS)
    outputs = output_layers(model) if "output" in entries else []
    norm = NORMALIZATION_LAYERS if "normalization" in entries else ()
    forced = _layers_owning(model, set(float32_variables))

    def policy_of(layer: keras.layers.Layer) -> str:
        if any(layer is o for o in outputs) or any(layer is f for f in forced):
            return "float32"
        if isinstance(layer, classes) or any(fnmatch.fnmatchcase(layer.name, p) for p in patterns):
            return "float32"
        if isinstance(layer, norm):
            return f"mixed_{precision}"
        return main

    return policy_of


def _layers_owning(model: keras.Model, paths: set[str]) -> list[keras.layers.Layer]:
    if not paths:
        return []
    leaves = [l for l in iter_layers(model) if not list(l._flatten_layers(include_self=False))]
    return [l for l in leaves if any(v.path in paths for v in l.weights)]
