"""Keras callbacks used by :func:`fp16cont.continue_training`.

Example:
    >>> timer = EpochTimer()
    >>> timer.epoch_seconds
    []
"""

from __future__ import annotations

import time
from typing import Any

import keras

__all__ = ["EpochTimer", "LossScaleLogger"]


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time and the number of training steps of each epoch.

    Attributes:
        epoch_seconds: Seconds per finished epoch (validation included).
        epoch_steps: Training batches per finished epoch.
        epoch_logs: The names in each finished epoch's logs (``val_*`` only
            in the epochs that validated, e.g. under ``validation_freq``).
    """

    async_safe = True  # only counts: Keras may run its batch hook off the training thread

    def __init__(self) -> None:
        super().__init__()
        self.epoch_seconds: list[float] = []
        self.epoch_steps: list[int] = []
        self.epoch_logs: list[tuple[str, ...]] = []
        self._start = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # with steps_per_execution, Keras names the nominal end of an epoch's last, shorter call
        known = (self.params or {}).get("steps")
        self._steps = min(batch + 1, known) if known else batch + 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._start)
        self.epoch_steps.append(self._steps)
        self.epoch_logs.append(tuple(sorted(logs or {})))


class LossScaleLogger(keras.callbacks.Callback):
    """Adds the dynamic loss scale and the skipped-step count to each epoch's logs.

    ``History`` then holds ``loss_scale`` and ``skipped_steps`` per epoch, in
    every engine mode.

    Example:
        >>> model.fit(x, y, callbacks=[LossScaleLogger()])  # doctest: +SKIP
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from fp16cont.optim.loss_scale import find_loss_scale

        if logs is None:
            return
        scaler = find_loss_scale(self.model.optimizer)
        if scaler is None or not scaler.built:
            return
        logs["loss_scale"] = float(keras.ops.convert_to_numpy(scaler.dynamic_scale))
        skipped = getattr(scaler, "skipped_steps", None)
        if skipped is not None:
            logs["skipped_steps"] = float(keras.ops.convert_to_numpy(skipped))
