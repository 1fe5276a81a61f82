"""Timing shared by the GPU benchmarks: epoch wall time up to the device having finished.

Example:
    >>> timer = SyncedTimer()  # doctest: +SKIP
    >>> model.fit(x, y, epochs=3, callbacks=[timer])  # doctest: +SKIP
    >>> timer.seconds  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import keras


def block(model: keras.Model) -> None:
    """Wait until the device has finished all work queued for ``model``'s weights."""
    if keras.backend.backend() == "jax":
        import jax

        jax.block_until_ready([v.value for v in model.trainable_variables])
    elif keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


class SyncedTimer(keras.callbacks.Callback):
    """Epoch wall time up to every device having finished the epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if self.model is not None:
            block(self.model)
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        block(self.model)
        self.seconds.append(time.perf_counter() - self._start)
