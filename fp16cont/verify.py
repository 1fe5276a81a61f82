"""Check a rebuilt 16-bit model against its float32 source on one batch.

Example:
    >>> import keras
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> compare_models(m, m).max_abs_diff
    0.0
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fp16cont.errors import NonFiniteOutputError
from fp16cont.reports import Verification

__all__ = ["probe_batch", "compare_models"]


def probe_batch(model: keras.Model, rows: int = 16, seed: int = 0) -> Any | None:
    """A deterministic batch that fits the model's inputs.

    Float inputs get standard-normal values, integer inputs zeros and ones.

    Args:
        model: A built model.
        rows: Batch size.
        seed: Random seed.

    Returns:
        An array (or a list of arrays for several inputs), or ``None`` when the
        model declares no input shape.
    """
    rng = np.random.default_rng(seed)
    specs = _input_specs(model)
    if not specs:
        return None
    arrays = [_random_input(rng, rows, shape, dtype) for shape, dtype in specs]
    return arrays[0] if len(arrays) == 1 else arrays


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


def _input_specs(model: keras.Model) -> list[tuple[tuple[int, ...], str]]:
    inputs = getattr(model, "inputs", None)
    try:
        if inputs:
            return [(tuple(t.shape[1:]), str(t.dtype)) for t in keras.tree.flatten(inputs)]
    except (AttributeError, ValueError):
        pass
    shape = (model.get_build_config() or {}).get("input_shape")
    if shape and all(isinstance(d, (int, type(None))) for d in shape):
        return [(tuple(shape[1:]), "float32")]
    return []


def _random_input(rng: np.random.Generator, rows: int, shape: tuple[Any, ...], dtype: str) -> np.ndarray:
    full = (rows, *(d if d is not None else 8 for d in shape))
    if "int" in dtype or dtype == "bool":
        return rng.integers(0, 2, size=full).astype(dtype)
    return rng.standard_normal(full).astype("float32")


def _outputs(model: keras.Model, batch: Any) -> list[np.ndarray]:
    out = model(batch, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for o in keras.tree.flatten(out)]


def _argmax_agreement(expected: np.ndarray, actual: np.ndarray) -> float | None:
    if expected.ndim < 2 or expected.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(expected, -1) == np.argmax(actual, -1)))
