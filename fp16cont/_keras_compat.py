"""Every use of a private Keras name in fp16cont, in one place.

Keras 3 keeps a few things fp16cont needs behind underscores: building a
model's metrics and loss for a batch without training on it, and the JAX
trainer's protocol for state that lives outside the variables while a
training loop runs. Each is used here only, and checked against the Keras
range fp16cont is tested with (``SUPPORTED_KERAS``), so that a renamed
attribute fails with a clear error instead of silently doing nothing.

Example:
    >>> check_keras_version()  # raises UnsupportedKerasError outside the range
"""

from __future__ import annotations

from typing import Any

import keras

from fp16cont.errors import Fp16ContError

__all__ = [
    "SUPPORTED_KERAS",
    "UnsupportedKerasError",
    "check_keras_version",
    "symbolic_build",
    "set_pending_jax_state",
    "jax_state_was_synced",
]

SUPPORTED_KERAS = ((3, 8), (4, 0))  # [lowest, highest) major.minor tested


class UnsupportedKerasError(Fp16ContError, RuntimeError):
    """The installed Keras lacks an internal fp16cont relies on."""


def _version() -> tuple[int, int]:
    major, minor = (int(p) for p in keras.__version__.split(".")[:2])
    return major, minor


def check_keras_version() -> None:
    """Raise :class:`UnsupportedKerasError` outside the tested Keras range.

    Raises:
        UnsupportedKerasError: If ``keras.__version__`` is outside ``SUPPORTED_KERAS``.
    """
    low, high = SUPPORTED_KERAS
    if not low <= _version() < high:
        raise UnsupportedKerasError(
            f"fp16cont supports Keras {low[0]}.{low[1]} up to (not including) {high[0]}.{high[1]}; "
            f"this process has Keras {keras.__version__}. Fix: pip install 'keras>={low[0]}.{low[1]},<{high[0]}.{high[1]}'."
        )


def _require(obj: Any, name: str) -> Any:
    if not hasattr(obj, name):
        raise UnsupportedKerasError(
            f"Keras {keras.__version__} has no `{type(obj).__name__}.{name}`, which fp16cont's training "
            f"engine uses. Fix: install a Keras in the supported range {SUPPORTED_KERAS[0]}..{SUPPORTED_KERAS[1]}, "
            "or pass engine='fit' to train through Keras' own fit."
        )
    return getattr(obj, name)


def symbolic_build(model: keras.Model, batch: Any) -> None:
    """Create a model's metric and loss variables for ``batch``, as ``fit`` does first.

    Args:
        model: A compiled Keras model.
        batch: One ``(x, y)`` or ``(x, y, sample_weight)`` batch of arrays.
    """
    _require(model, "_symbolic_build")(data_batch=batch)  # private Keras API


def set_pending_jax_state(model: keras.Model, state: tuple[Any, Any, Any, Any]) -> None:
    """Hand the trained state to Keras' JAX trainer protocol without writing it back.

    Keras callbacks that read ``self.model`` on the JAX backend call
    ``model.jax_state_sync()``, which writes this state into the variables
    first; a loop that runs no such callback never pays for the write.

    Args:
        model: The model being trained.
        state: ``(trainable, non_trainable, optimizer, metrics)`` value lists.
    """
    _require(model, "jax_state_sync")
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
