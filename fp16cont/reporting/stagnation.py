"""How many updates did 16-bit rounding cancel? An audit and a callback.

An update is *cancelled* when the optimizer's float32 update of a weight is
non-zero but the stored 16-bit weight did not change, and *lost* when it is
not kept anywhere (with Kahan compensation it stays in the error buffer).

Example:
    >>> report = stagnation_audit(model16, x[:128], y[:128])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import keras

from fp16cont.convert.architecture import compile_config, copy_model
from fp16cont.optim.carry import innermost_optimizer, private_copy
from fp16cont.optim.compensation import CompensatedOptimizer, Compensation, find_compensated
from fp16cont.errors import InvalidArgumentError
from fp16cont.optim.loss_scale import DynamicLossScale
from fp16cont.reporting.results import LayerStagnation, StagnationReport

__all__ = ["LayerStagnation", "StagnationReport", "stagnation_report", "stagnation_audit", "StagnationMonitor"]


def stagnation_report(optimizer: Any) -> StagnationReport | None:
    """Read the last step's counters from a (wrapped) :class:`CompensatedOptimizer`.

    Args:
        optimizer: The model's optimizer.

    Returns:
        The report, or ``None`` when no compensated optimizer with
        ``track_updates=True`` is in the chain.
    """
    compensated = find_compensated(optimizer)
    if compensated is None or not compensated.built or not compensated.track_updates:
        return None
    return _read_counts(compensated)


def _read_counts(compensated: CompensatedOptimizer) -> StagnationReport:
    layers: dict[str, list[int]] = {}
    for (path, intended, cancelled, lost), low in zip(compensated.update_counts(), compensated.sixteen_bit):
        if not low:
            continue
        totals = layers.setdefault(path.rsplit("/", 1)[0], [0, 0, 0])
        for i, value in enumerate((intended, cancelled, lost)):
            totals[i] += value
    return StagnationReport(compensated.compensation, tuple(LayerStagnation(k, *v) for k, v in layers.items()))


def stagnation_audit(
    model: keras.Model,
    x: Any,
    y: Any,
    *,
    optimizer: Any = None,
    loss: Any = None,
    compensation: Compensation = "none",
    batch_size: int = 128,
) -> StagnationReport:
    """Run one training step on a copy of ``model`` and report cancelled updates.

    The model is not modified: a clone with the same per-layer dtype policies
    and weights takes the step.

    Args:
        model: A built 16-bit model.
        x: Inputs; the first ``batch_size`` rows are used.
        y: Targets.
        optimizer: The optimizer to audit (its config is copied); default the
            model's compiled one, else ``SGD(0.01)``.
        loss: The loss; default the model's compiled loss.
        compensation: ``"none"`` shows what plain 16-bit rounding cancels;
            ``"kahan"`` / ``"stochastic"`` show what compensation keeps.
        batch_size: Rows of the step.

    Returns:
        A :class:`StagnationReport`.

    Raises:
        InvalidArgumentError: If no loss is known.
    """
    base = innermost_optimizer(optimizer if optimizer is not None else getattr(model, "optimizer", None))
    fresh = private_copy(base) if base is not None else keras.optimizers.SGD(0.01)  # its config, not its state
    loss = loss if loss is not None else compile_config(model).get("loss")
    if loss is None:
        raise InvalidArgumentError("stagnation_audit needs a loss. Fix: pass loss=..., e.g. 'sparse_categorical_crossentropy'.")
    clone = copy_model(model, lambda layer: layer.dtype_policy.name)
    wrapped: keras.optimizers.Optimizer = CompensatedOptimizer(fresh, compensation, track_updates=True)
    if any(str(v.dtype) == "float16" for v in clone.trainable_weights):
        wrapped = DynamicLossScale(wrapped)
    clone.compile(wrapped, keras.saving.deserialize_keras_object(loss) if isinstance(loss, dict) else loss)
    clone.train_on_batch(x[:batch_size], y[:batch_size])
    report = stagnation_report(clone.optimizer)  # built and tracking: never None here
    return report if report is not None else StagnationReport(compensation, ())


class StagnationMonitor(keras.callbacks.Callback):
    """Log the share of cancelled and lost updates at the end of each epoch.

    Adds ``cancelled_share`` and ``lost_share`` to the epoch logs (and so to
    the History) and keeps each epoch's :class:`StagnationReport`.

    Example:
        >>> StagnationMonitor().reports
        []
    """

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[StagnationReport] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        report = stagnation_report(self.model.optimizer)
        if report is None:
            return
        self.reports.append(report)
        if logs is not None:
            logs["cancelled_share"] = report.cancelled_share
            logs["lost_share"] = report.lost_share
