"""Numeric facts about the floating-point formats fp16cont works with.

This is the one place where the largest finite value, the smallest normal
and subnormal values, the unit in the last place and the byte size of each
format are defined. Everything else imports them from here.

Example:
    >>> from fp16cont import numerics
    >>> numerics.facts("float16").max
    65504.0
    >>> float(numerics.ulp(1.0, "bfloat16"))
    0.0078125
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import ml_dtypes
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "LowPrecision",
    "Precision",
    "LOW_PRECISIONS",
    "FormatFacts",
    "facts",
    "numpy_dtype",
    "ulp",
    "vanishing_ratio",
    "is_low_float",
]

LowPrecision = Literal["float16", "bfloat16"]
Precision = Literal["float32", "float16", "bfloat16"]
LOW_PRECISIONS: Final[tuple[LowPrecision, ...]] = ("float16", "bfloat16")


@dataclass(frozen=True)
class FormatFacts:
    """Facts of one binary floating-point format.

    Attributes:
        name: The dtype name (``"float16"``, ``"bfloat16"``, ``"float32"``).
        max: Largest finite value.
        smallest_normal: Smallest positive normal value.
        smallest_subnormal: Smallest positive subnormal value.
        mantissa_bits: Explicit fraction bits (10 for float16, 7 for bfloat16).
        eps: Distance from 1.0 to the next larger value.
        bytes: Storage size of one value.
    """

    name: str
    max: float
    smallest_normal: float
    smallest_subnormal: float
    mantissa_bits: int
    eps: float
    bytes: int

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal value (``-14`` for float16)."""
        return int(np.log2(self.smallest_normal))


def numpy_dtype(precision: object) -> np.dtype:
    """Return the numpy dtype for a dtype name (or a Keras / backend dtype).

    Args:
        precision: ``"float32"``, ``"float16"``, ``"bfloat16"`` or any other
            name numpy knows (``"int64"``, ``"bool"``); anything whose ``str``
            or ``name`` is such a name.

    Returns:
        The numpy dtype; bfloat16 comes from ``ml_dtypes``.

    Raises:
        TypeError: If numpy knows no such dtype.

    Example:
        >>> numpy_dtype("bfloat16").name, numpy_dtype("int64").name
        ('bfloat16', 'int64')
    """
    name = str(getattr(precision, "name", precision))
    return _DTYPES[name] if name in _DTYPES else np.dtype(name)


def facts(precision: str) -> FormatFacts:
    """Return the :class:`FormatFacts` of a format.

    Args:
        precision: ``"float32"``, ``"float16"`` or ``"bfloat16"``.

    Returns:
        The facts of that format.

    Raises:
        KeyError: If the name is not one of the three formats.

    Example:
        >>> facts("bfloat16").mantissa_bits
        7
    """
    return _FACTS[precision]


def ulp(x: ArrayLike, precision: str) -> NDArray[np.float64]:
    """Unit in the last place of the format at the magnitude of ``x``.

    The spacing of representable values in the binade that holds ``|x|``
    (the subnormal spacing below the smallest normal). Round-to-nearest puts
    every in-range value within half of this of its rounded result.

    Args:
        x: Values (any float dtype); computed in float64.
        precision: The target format.

    Returns:
        float64 array of the same shape.

    Example:
        >>> float(ulp(1000.0, "float16"))
        0.5
    """
    f = facts(precision)
    a = np.abs(np.asarray(x, dtype=np.float64))
    _, exp = np.frexp(a)  # a = m * 2**exp, m in [0.5, 1)
    exponent = np.maximum(exp - 1, f.min_exponent)
    return np.ldexp(1.0, exponent - f.mantissa_bits)


def vanishing_ratio(precision: str) -> float:
    """Ratio |w| / |dw| above which ``w + dw`` rounds back to ``w``.

    With round-to-nearest-even an update smaller than half an ulp of ``w``
    is lost: that happens once ``|w| > 2**(mantissa_bits + 1) * |dw|``
    (2048 for float16, 256 for bfloat16).

    Args:
        precision: The weight format.

    Returns:
        The ratio as a float.

    Example:
        >>> vanishing_ratio("float16")
        2048.0
    """
    return float(2 ** (facts(precision).mantissa_bits + 1))


def is_low_float(dtype: object) -> bool:
    """Whether a dtype (numpy, Keras string or backend dtype) is 16-bit float.

    Args:
        dtype: Anything whose ``str`` or ``name`` is a dtype name.

    Returns:
        True for float16 and bfloat16.

    Example:
        >>> is_low_float("bfloat16"), is_low_float(np.float32)
        (True, False)
    """
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    return str(name).rsplit(".", 1)[-1] in LOW_PRECISIONS


_DTYPES: Final[dict[str, np.dtype]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def _facts_from_finfo(name: str) -> FormatFacts:
    info = ml_dtypes.finfo(_DTYPES[name])
    return FormatFacts(
        name=name,
        max=float(info.max),
        smallest_normal=float(info.smallest_normal),
        smallest_subnormal=float(info.smallest_subnormal),
        mantissa_bits=int(info.nmant),
        eps=float(info.eps),
        bytes=int(_DTYPES[name].itemsize),
    )


_FACTS: Final[dict[str, FormatFacts]] = {name: _facts_from_finfo(name) for name in _DTYPES}
