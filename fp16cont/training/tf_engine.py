"""The TensorFlow fast path of :func:`~fp16cont.continue_training`: engine mode ``"compiled"``.

On Keras' TensorFlow backend the steps already run as one ``tf.function``
graph and array inputs are already staged by ``tf.data`` (a gather per batch,
``prefetch(AUTOTUNE)``). What costs time around that is the host: one Python
round trip, one set of batch callbacks and one logs conversion per step. The
``"compiled"`` mode therefore runs Keras' own ``fit`` (so callbacks,
``History``, the progress bar, validation, class and sample weights,
``validation_split`` and ``initial_epoch`` are Keras' own) with
``steps_per_execution`` steps per compiled call, in a ``tf.while_loop`` on the
device:

- ``steps_per_execution``: 32 with a GPU or TPU, :data:`CPU_STEPS_PER_EXECUTION`
  on CPUs (see ``benchmarks/RESULTS.md``), or what ``Engine(steps_per_execution=)``
  or the model's own ``compile(steps_per_execution=)`` asks, whichever is larger.
  Batch-level callbacks fire once per call (``on_train_batch_begin(first)``,
  ``on_train_batch_end(last, logs)``), as in Keras.
- XLA (``jit_compile``): Keras' own choice for the model, which is on with a
  GPU and off on CPU-only machines, where XLA made the bfloat16 step slower
  (measured). fp16cont's optimizer wrappers compile under XLA (tested); a
  model compiled with ``jit_compile=True`` keeps it.

The model's own ``steps_per_execution`` and traced functions are restored
afterwards: the loop traced for the run lives for that call only, and
nothing is left on the model.

Example:
    >>> from fp16cont.training.engine import Engine
    >>> choose_compiled(Engine("compiled", steps_per_execution=4), "tensorflow").steps_per_execution
    4
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

from fp16cont.errors import UnsupportedBackendError

__all__ = ["CPU_STEPS_PER_EXECUTION", "ACCELERATOR_STEPS_PER_EXECUTION", "choose_compiled", "fit_compiled",
           "dividing_steps", "StepClippedProgbar", "progress_callbacks"]

CPU_STEPS_PER_EXECUTION = 8
ACCELERATOR_STEPS_PER_EXECUTION = 32


def choose_compiled(engine: Any, backend: str, fit_kwargs: dict[str, Any] | None = None) -> Any:
    """The ``"compiled"`` :class:`~fp16cont.training.engine.EngineChoice` for a TensorFlow run.

    Keras' loop starts one call per ``steps_per_execution`` steps and each
    call runs that many steps unless the data ends, so a ``steps_per_epoch``
    it does not divide would train more steps than asked (10 at 8 per call:
    16). The count is therefore lowered to divide the call's
    ``steps_per_epoch`` and ``validation_steps`` (:func:`dividing_steps`),
    and the reason says so.

    Args:
        engine: The requested :class:`~fp16cont.training.engine.Engine`.
        backend: ``keras.backend.backend()``.
        fit_kwargs: The call's extra ``fit`` arguments.

    Returns:
        The engine choice (its ``steps_per_execution`` is the engine's own
        or the device default, lowered as above; :func:`fit_compiled` raises
        it to the model's compiled value if that is larger).

    Raises:
        UnsupportedBackendError: When ``"compiled"`` is forced on another backend.

    Example:
        >>> from fp16cont.training.engine import Engine
        >>> choose_compiled(Engine("compiled", steps_per_execution=8), "tensorflow", {"steps_per_epoch": 10}).steps_per_execution
        5
    """
    from fp16cont.training.engine import EngineChoice

    if backend != "tensorflow":
        raise UnsupportedBackendError(
            f"engine='compiled' runs on Keras' TensorFlow backend; this process uses {backend!r}. Fix: leave "
            "engine='auto' (it picks the fast mode of every backend) or pass engine='fit'."
        )
    accelerator = _has_accelerator()
    wanted = engine.steps_per_execution or (ACCELERATOR_STEPS_PER_EXECUTION if accelerator else CPU_STEPS_PER_EXECUTION)
    counts = {name: (fit_kwargs or {}).get(name) for name in ("steps_per_epoch", "validation_steps")}
    counts = {name: value for name, value in counts.items() if value}
    spe = dividing_steps(wanted, list(counts.values()))
    lowered = "" if spe == wanted else (
        f"; {spe} steps per call, not {wanted}, so that the calls add up to "
        + ", ".join(f"{name}={value}" for name, value in counts.items()))
    return EngineChoice(
        "compiled", spe,
        f"Keras fit's compiled loop, {wanted} steps per tf.function call, inputs staged by tf.data with prefetch; "
        f"XLA as Keras picks it ({'on with' if accelerator else 'off without'} an accelerator){lowered}",
    )


def fit_compiled(model: keras.Model, steps_per_execution: int, fit: Callable[[], Any]) -> Any:
    """Run ``fit()`` (a call of ``model.fit``) with ``steps_per_execution`` steps per compiled call.

    Args:
        model: A compiled model.
        steps_per_execution: Steps per call (from :func:`choose_compiled`); the
            model's own compiled value is used when it is larger (the user's
            own choice, run as Keras runs it).
        fit: Calls ``model.fit`` with the run's arguments.

    Returns:
        What ``fit()`` returns (the ``History``).

    Example:
        >>> fit_compiled(model, 8, lambda: model.fit(x, y, verbose=0))  # doctest: +SKIP
    """
    own = (model.steps_per_execution, model.train_function, model.test_function, model.predict_function)
    spe = max(int(steps_per_execution), int(model.steps_per_execution or 1))
    if spe != own[0]:
        # traced again for this call's step count; nothing of it stays on the model afterwards
        model.train_function = model.test_function = model.predict_function = None
    model.steps_per_execution = spe
    try:
        return fit()
    finally:
        model.steps_per_execution, model.train_function, model.test_function, model.predict_function = own


def dividing_steps(steps_per_execution: int, step_counts: Sequence[int | None]) -> int:
    """The largest count of steps per call, at most ``steps_per_execution``, that divides every given count.

    Args:
        steps_per_execution: The count wanted.
        step_counts: Step counts the calls must add up to exactly (``None``: not given).

    Returns:
        A count from 1 to ``steps_per_execution``.

    Example:
        >>> dividing_steps(8, [10, None]), dividing_steps(8, [12, 4]), dividing_steps(8, [])
        (5, 4, 8)
    """
    counts = [int(c) for c in step_counts if c]
    return next(d for d in range(max(int(steps_per_execution), 1), 0, -1) if all(c % d == 0 for c in counts))


class StepClippedProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, never counting a call's last step past the epoch's end.

    Keras' ``fit`` with ``steps_per_execution`` reports each call's last
    step as ``first + steps_per_execution - 1``, also for an epoch's last
    call that the data's end cut short: 12 batches at 8 per call print
    ``16/12``. This bar clips the step to the epoch's last one; other
    callbacks see Keras' values. (With ``steps_per_epoch`` given, the calls
    divide it exactly: :func:`choose_compiled`.) Data of unknown length has no
    last step to clip to, and shows Keras' count.

    Example:
        >>> bar = StepClippedProgbar()
        >>> bar.set_params({"verbose": 0, "epochs": 1, "steps": 12})
        >>> bar.on_train_batch_end(15)
        >>> bar.seen
        12
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.target:
            batch = min(int(batch), int(self.target) - 1)
        super().on_train_batch_end(batch, logs)


def progress_callbacks(callbacks: Any, verbose: Any) -> list[keras.callbacks.Callback]:
    """The progress bar to add to a ``"compiled"`` run's callbacks: none if silent or the user brings one.

    Args:
        callbacks: The callbacks the run already has.
        verbose: ``fit``'s ``verbose``.

    Returns:
        ``[StepClippedProgbar()]`` or ``[]``.

    Example:
        >>> progress_callbacks([], 0)
        []
    """
    if verbose == 0 or any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks or []):
        return []
    return [StepClippedProgbar()]


def _has_accelerator() -> bool:
    import tensorflow as tf

    return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())
