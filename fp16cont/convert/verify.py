"""Check a rebuilt 16-bit model against its float32 source on one batch.

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> compare_models(m, m).max_abs_diff
    0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from fp16cont.errors import NonFiniteOutputError
from fp16cont.reporting.results import Verification

__all__ = ["probe_batch", "compare_models"]


def probe_batch(model: keras.Model, rows: int = 16, seed: int = 0) -> Any | None:
    """A deterministic batch that fits the model's inputs, in their structure.

    Float inputs get standard-normal values. Integer inputs get valid token
    ids (0 and 1, below any vocabulary and segment count), and inputs named
    like a mask get ones. Dict, list and nested inputs keep their structure;
    unknown lengths become 8.

    Args:
        model: A built model.
        rows: Batch size.
        seed: Random seed.

    Returns:
        An array, or a dict / list of arrays shaped like ``model.input``, or
        ``None`` when the model declares no input shape.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> probe_batch(m, rows=4).shape
        (4, 3)
    """
    rng = np.random.default_rng(seed)
    structure = _input_structure(model)
    if structure is None:
        return None
    return keras.tree.map_structure(lambda spec: _random_input(rng, rows, spec), structure)


def compare_models(source: keras.Model, rebuilt: keras.Model, rows: int = 16) -> Verification | None:
    """Run one probe batch through both models and compare the outputs.

    Args:
        source: The float32 model.
        rebuilt: The 16-bit model.
        rows: Batch size of the probe.

    Returns:
        A :class:`Verification`, or ``None`` when no input shape is known.

    Raises:
        NonFiniteOutputError: If the rebuilt model outputs NaN/Inf where the
            source does not.
    """
    batch = probe_batch(source, rows)
    if batch is None:
        return None
    expected = _outputs(source, batch)
    actual = _outputs(rebuilt, batch)
    for e, a in zip(expected, actual):
        if np.isfinite(e).all() and not np.isfinite(a).all():
            raise NonFiniteOutputError(
                f"The 16-bit model {rebuilt.name!r} outputs NaN/Inf on a probe batch where the "
                "float32 model is finite: an activation overflows the 16-bit range. Fix: use "
                "precision='bfloat16', or keep the overflowing layers in float32 with "
                "keep_float32=(..., 'layer_name_pattern')."
            )
    diff = max((float(np.max(np.abs(e - a), initial=0.0)) for e, a in zip(expected, actual)), default=0.0)
    return Verification(rows, diff, _argmax_agreement(expected[0], actual[0]))


@dataclass(frozen=True)
class _Spec:
    shape: tuple[Any, ...]
    dtype: str = "float32"
    name: str = ""


def _input_structure(model: keras.Model) -> Any | None:
    """:class:`_Spec` leaves in the structure of the model's input."""
    try:
        inputs = model.input if getattr(model, "inputs", None) else None
    except (AttributeError, ValueError):
        inputs = None
    if inputs is not None:
        return keras.tree.map_structure(
            lambda t: _Spec(tuple(t.shape[1:]), str(t.dtype), str(getattr(t, "name", ""))), inputs
        )
    shape = (model.get_build_config() or {}).get("input_shape")
    if _is_shape(shape):
        return _Spec(tuple(shape[1:]))
    if isinstance(shape, (list, tuple)) and shape and all(_is_shape(s) for s in shape):
        return [_Spec(tuple(s[1:])) for s in shape]
    if isinstance(shape, dict) and shape and all(_is_shape(s) for s in shape.values()):
        return {k: _Spec(tuple(s[1:])) for k, s in shape.items()}
    return None


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, (list, tuple)) and len(shape) >= 1 and all(isinstance(d, (int, type(None))) for d in shape)


def _random_input(rng: np.random.Generator, rows: int, spec: _Spec) -> np.ndarray:
    dtype, name = spec.dtype, spec.name
    full = (rows, *(d if d is not None else 8 for d in spec.shape))
    if "int" in dtype or dtype == "bool":
        if "mask" in name.lower() or dtype == "bool":
            return np.ones(full, dtype=dtype)
        return rng.integers(0, 2, size=full).astype(dtype)
    return rng.standard_normal(full).astype("float32")


def _outputs(model: keras.Model, batch: Any) -> list[np.ndarray]:
    out = _forward(model, batch)
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for o in keras.tree.flatten(out)]


def _forward(model: keras.Model, batch: Any) -> Any:
    """``model(batch, training=False)``; on JAX as one compiled program.

    Called eagerly, JAX compiles every operation of the forward pass on its
    own the first time it runs (seconds for a ResNet-50 on a GPU); one
    ``jax.jit`` of the model's ``stateless_call`` compiles once. Nothing is
    stored on the model.
    """
    if keras.backend.backend() != "jax":
        return model(batch, training=False)
    import jax

    def call(trainable: Any, non_trainable: Any, inputs: Any) -> Any:
        return model.stateless_call(trainable, non_trainable, inputs, training=False)[0]

    return jax.jit(call)([v.value for v in model.trainable_variables],
                         [v.value for v in model.non_trainable_variables], batch)


def _argmax_agreement(expected: np.ndarray, actual: np.ndarray) -> float | None:
    if expected.ndim < 2 or expected.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(expected, -1) == np.argmax(actual, -1)))
