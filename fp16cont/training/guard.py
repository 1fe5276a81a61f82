"""Survive NaN/Inf during training: roll back to the last good state.

Example:
    >>> guard = NonFiniteGuard(max_failures=3)
    >>> guard.rollbacks
    0
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from fp16cont.errors import TrainingDivergedError
from fp16cont.optim.loss_scale import find_loss_scale
from fp16cont.convert.sources import to_numpy
from fp16cont.reporting.results import GuardEvent

__all__ = ["NonFiniteGuard", "GuardEvent"]


class NonFiniteGuard(keras.callbacks.Callback):
    """Detect NaN/Inf loss or weights, roll back, back off and continue.

    The last good weights and optimizer state are kept in host memory (taken
    at the start and every ``snapshot_every`` finite batches). On a non-finite
    loss the guard restores them, halves the loss scale (when loss scaling is
    on) or multiplies the learning rate by ``lr_factor``, resets the running
    metrics and lets training continue. After ``max_failures`` rollbacks it
    restores the last good state once more and raises
    :class:`TrainingDivergedError`.

    Args:
        max_failures: Rollbacks tolerated before giving up.
        lr_factor: Learning-rate multiplier after a rollback without loss scaling.
        snapshot_every: Finite batches between snapshots.
        check_every: Steps between two looks at the loss: the guard looks
            at the first batch hook at or after every ``check_every``-th step
            of an epoch, so the meaning is the same when one hook covers
            several steps (``steps_per_execution``). The running mean loss
            stays non-finite for the rest of the epoch once a step went
            wrong, so nothing is missed; looking after every step would make
            the host wait for the accelerator at every step.

    ``snapshot_every`` counts steps too, not batch hooks.

    Example:
        >>> model.fit(x, y, callbacks=[NonFiniteGuard()])  # doctest: +SKIP
    """

    # The batch-end hook only looks at the loss and raises a flag, so Keras may
    # run it off the training thread (no stall of the accelerator); weights are
    # read and restored at the next batch's start, on the training thread.
    async_safe = True

    def __init__(self, max_failures: int = 3, lr_factor: float = 0.5, snapshot_every: int = 50,
                 check_every: int = 10) -> None:
        super().__init__()
        self.check_every = check_every
        self.max_failures = max_failures
        self.lr_factor = lr_factor
        self.snapshot_every = snapshot_every
        self.events: list[GuardEvent] = []
        self._weights: list[np.ndarray] = []
        self._optimizer: list[np.ndarray] = []
        self._epoch = 0
        self._since_snapshot = 0
        self._bad_batch: int | None = None
        self._current = 0
        self._looked = 0  # check_every blocks of this epoch already looked at
        self._stale_before: tuple[int, int] = (-1, -1)  # looks at batches before a rollback are stale

    @property
    def rollbacks(self) -> int:
        """Number of rollbacks so far."""
        return sum(e.action == "rollback" for e in self.events)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.events, self._bad_batch, self._stale_before, self._since_snapshot = [], None, (-1, -1), 0
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # so the snapshot holds its state
        self._snapshot()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._current = 0
        self._looked = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if (self._epoch, batch) < self._stale_before:
            return  # its loss was computed before the last rollback
        self._since_snapshot += max(1, batch - self._current + 1)  # the steps this hook covers
        block = (batch + 1) // self.check_every
        if block == self._looked and self._since_snapshot < self.snapshot_every:
            return
        self._looked = block
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self._bad_batch = batch

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._current = batch
        self._settle()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if self._bad_batch is None and loss is not None and not np.isfinite(float(loss)):
            self._bad_batch = -1
        if not self._settle():
            self._snapshot_if_finite(-1)

    def _settle(self) -> bool:
        """Handle a flagged loss, or take a due snapshot; ``True`` when it rolled back."""
        if self._bad_batch is not None:
            batch, self._bad_batch = self._bad_batch, None
            self._handle(batch)
            return True
        if self._since_snapshot >= self.snapshot_every:
            self._snapshot_if_finite(-1)
        return False

    def _snapshot_if_finite(self, batch: int) -> None:
        if self._weights_finite():
            self._snapshot()
        else:
            self._handle(batch)

    def _snapshot(self) -> None:
        self._weights = [np.array(v) for v in self.model.get_weights()]
        optimizer = self.model.optimizer
        self._optimizer = [to_numpy(v) for v in optimizer.variables] if optimizer is not None and optimizer.built else []
        self._since_snapshot = 0

    def _weights_finite(self) -> bool:
        return all(np.isfinite(w).all() for w in self.model.get_weights() if np.issubdtype(np.asarray(w).dtype, np.inexact) or str(np.asarray(w).dtype) == "bfloat16")

    def _restore(self) -> None:
        self.model.set_weights(self._weights)
        optimizer = self.model.optimizer
        for variable, value in zip(optimizer.variables if optimizer is not None else [], self._optimizer):
            variable.assign(value)

    def _handle(self, batch: int) -> None:
        scaler = find_loss_scale(self.model.optimizer)
        if scaler is not None and self._weights_finite():
            action = "skipped"  # the loss scale optimizer skipped the step already
        else:
            action = "rollback"
            if self.rollbacks >= self.max_failures:
                self._restore()
                self.model.stop_training = True
                raise TrainingDivergedError(
                    f"Training produced NaN/Inf {self.rollbacks + 1} times (epoch {self._epoch + 1}, "
                    f"batch {batch + 1}); the model holds its last good weights. Fix: lower the "
                    "learning rate, use precision='bfloat16' (wider range), keep unstable layers in "
                    "float32 (keep_float32=...), or check the data for NaN/Inf."
                )
            self._restore()
            self._back_off(scaler)
        self.model.reset_metrics()
        self._stale_before = (self._epoch, self._current)
        self._bad_batch = None
        self.events.append(GuardEvent(self._epoch, batch, action, _learning_rate(self.model.optimizer), _scale(scaler)))

    def _back_off(self, scaler: Any) -> None:
        if scaler is not None:
            scaler.dynamic_scale.assign(keras.ops.maximum(scaler.dynamic_scale * 0.5, getattr(scaler, "min_scale", 1.0)))
            return
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        if isinstance(rate, keras.Variable):
            rate.assign(rate * self.lr_factor)
        else:
            warnings.warn(
                "NonFiniteGuard rolled back but cannot lower a learning-rate schedule; it retries at the "
                "same rate. Use a constant learning rate, or a schedule that is safe to repeat.",
                stacklevel=2,
            )


def _learning_rate(optimizer: Any) -> float | None:
    rate = getattr(optimizer, "learning_rate", None)
    try:
        return float(keras.ops.convert_to_numpy(rate))
    except (TypeError, ValueError):
        return None


def _scale(scaler: Any) -> float | None:
    return None if scaler is None else float(to_numpy(scaler.dynamic_scale))
