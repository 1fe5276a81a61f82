"""The TensorFlow-only pieces of fp16cont, imported only on that backend.

Example:
    >>> fused = xla_function(lambda a: a * 2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["xla_function", "single_device"]


def xla_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile ``fn`` with XLA so its element-wise chain runs as one fused loop.

    Keras turns XLA off for whole training steps on CPU-only machines (its
    bfloat16 matrix products are slower there than oneDNN's); the optimizer
    update is element-wise only and gains from fusion.

    Args:
        fn: A function of tensors that may read and assign variables.

    Returns:
        The XLA-compiled ``tf.function``.
    """
    return tf.function(fn, jit_compile=True, autograph=False, reduce_retracing=True)


def single_device() -> bool:
    """Whether no multi-replica ``tf.distribute`` strategy is active."""
    return not tf.distribute.has_strategy() or tf.distribute.get_strategy().num_replicas_in_sync == 1
