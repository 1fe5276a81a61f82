"""Continue training copies of one float32 model in several precisions, side by side.

Every run starts from a fresh copy of the source model made from the same
float32 weights (cast to 16-bit for the 16-bit runs), is compiled like the
source (or with a fresh copy of the ``optimizer``, ``loss`` and ``metrics``
given), is seeded right before training (:func:`seeded`, so the data order and
any dropout masks are the same for every precision), and is trained with
:func:`fp16cont.continue_training`. The source model and the optimizer given
are never modified, ``keras.config`` globals are never changed, Python's and
NumPy's global random generators are restored after each run, and memory
counters are only reset when ``measure_memory=True`` asks for it.

Example:
    >>> import fp16cont
    >>> (x, y), (xt, yt) = fp16cont.load_dataset("mnist.npz", limit=2000)  # doctest: +SKIP
    >>> model = fp16cont.mlp((28, 28, 1), width=256)  # doctest: +SKIP
    >>> report = fp16cont.compare(model, (x, y), (xt, yt), epochs=3,
    ...                           loss="sparse_categorical_crossentropy")  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from fp16cont.convert.architecture import check_built, compile_config, copy_model
from fp16cont.reporting.results import ComparisonReport, EpochRecord, PeakMemory, RunRecord
from fp16cont.training.data import check_fit_args, is_array_like
from fp16cont.errors import (
    DataError,
    PerformanceWarning,
    InvalidArgumentError,
    InvalidSourceError,
    MissingLossError,
    check_bool,
    is_int,
)
from fp16cont.hardware import detect_device, select_precision
from fp16cont.reporting.memory import describe_method, peak_memory_growth, start_peak_memory
from fp16cont.convert.rebuild import build_fp16_model
from fp16cont.reporting.results import TrainingResult
from fp16cont.convert.sources import check_float32_source, load_model
from fp16cont.optim.carry import private_copy
from fp16cont.training.train import continue_training

__all__ = ["PRECISIONS", "PrecisionPlan", "resolve_precisions", "copy_for_precision", "compare", "seeded"]

PRECISIONS: tuple[str, ...] = ("float32", "auto", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")
Pair = tuple[Any, Any]


@dataclass(frozen=True)
class PrecisionPlan:
    """How one precision of a comparison is built.

    Attributes:
        requested: The name as asked for (one of :data:`PRECISIONS`).
        precision: The resolved format: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        mode: ``"float32"`` (an exact float32 copy), ``"pure"`` (fp16cont:
            16-bit variables and compute) or ``"mixed"`` (Keras mixed precision:
            float32 variables, 16-bit compute).
    """

    requested: str
    precision: str
    mode: str

    @property
    def label(self) -> str:
        """``"float32"``, ``"bfloat16"``, ``"mixed_float16"``, ..."""
        return f"mixed_{self.precision}" if self.mode == "mixed" else self.precision

    @property
    def description(self) -> str:
        """What the copy trains in: ``"bfloat16 (fp16cont pure)"``, ``"mixed_float16 (Keras mixed)"``, ``"float32"``."""
        return {"pure": f"{self.precision} (fp16cont pure)", "mixed": f"{self.label} (Keras mixed)"}.get(
            self.mode, self.precision
        )


def resolve_precisions(precisions: str | Sequence[str]) -> tuple[PrecisionPlan, ...]:
    """Check precision names and resolve ``"auto"`` for this hardware.

    Args:
        precisions: Names from :data:`PRECISIONS` (a single name is allowed).

    Returns:
        One :class:`PrecisionPlan` per name, in order.

    Raises:
        InvalidArgumentError: For an unknown or repeated precision (``"auto"``
            repeats the format it resolves to), or an empty sequence.

    Example:
        >>> [p.label for p in resolve_precisions(["float32", "mixed_bfloat16"])]
        ['float32', 'mixed_bfloat16']
    """
    try:
        names = (precisions,) if isinstance(precisions, str) else tuple(precisions)  # type: ignore[arg-type]
    except TypeError:
        names = (precisions,)  # type: ignore[assignment]  # not a sequence: _plan names it
    if not names:
        raise InvalidArgumentError(
            "Argument `precisions` is empty. Fix: pass e.g. precisions=('float32', 'auto')."
        )
    plans: list[PrecisionPlan] = []
    for name in names:
        plan = _plan(name)
        twin = next((p for p in plans if p.label == plan.label), None)
        if twin is not None:
            raise InvalidArgumentError(
                f"Argument `precisions` names {plan.label} twice: {twin.requested!r} and {name!r}. "
                f"Received: precisions={names!r}. Fix: list each precision once ('auto' is "
                f"{plan.label} on this machine); repeat seeds instead to repeat runs."
            )
        plans.append(plan)
    return tuple(plans)


def copy_for_precision(model: keras.Model, precision: str | PrecisionPlan) -> keras.Model:
    """A fresh copy of a float32 model in one precision, compiled like the source.

    ``"float32"`` rebuilds the architecture unchanged and copies the exact
    weights; the 16-bit precisions use :func:`fp16cont.build_fp16_model`
    (``mode="mixed"`` for ``"mixed_float16"`` / ``"mixed_bfloat16"``). A
    compiled source passes on its loss, metrics and optimizer settings (a
    fresh optimizer, without the source's optimizer state). The source is not
    modified.

    Args:
        model: A built float32 model.
        precision: A name from :data:`PRECISIONS` or a :class:`PrecisionPlan`.

    Returns:
        The new model.

    Raises:
        InvalidArgumentError: For an unknown precision.
        RebuildError: If the architecture cannot be rebuilt from its config.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
        >>> copy_for_precision(m, "bfloat16").layers[0].kernel.dtype
        'bfloat16'
    """
    plan = precision if isinstance(precision, PrecisionPlan) else _plan(precision)
    if plan.mode != "float32":
        return build_fp16_model(model, precision=plan.precision, mode=plan.mode)  # type: ignore[arg-type]
    copy = copy_model(model)
    config = compile_config(model)
    if config:
        copy.compile_from_config(config)
    return copy


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed every global random generator for a block, as ``keras.utils.set_random_seed`` does.

    Python's and NumPy's global generators get their previous state back
    when the block ends (Keras also draws the seeds of new layers from
    Python's); the backend's global seed (TensorFlow's, Keras'
    ``SeedGenerator``) cannot be read back, so it stays set to ``seed``.

    Args:
        seed: A non-negative integer, or ``None`` to only restore Python's
            and NumPy's generators afterwards.

    Example:
        >>> with seeded(0):
        ...     a = np.random.rand()
        >>> with seeded(0):
        ...     b = np.random.rand()
        >>> a == b
        True
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def compare(
    model: keras.Model | str | os.PathLike[str],
    train_data: Pair,
    validation_data: Pair | None = None,
    *,
    precisions: str | Sequence[str] = ("float32", "auto"),
    epochs: int,
    batch_size: int = 128,
    seeds: int | Sequence[int] = (0,),
    optimizer: Any = None,
    loss: Any = None,
    metrics: Sequence[Any] | None = None,
    warmup: bool = True,
    measure_memory: bool = False,
    verbose: Any = "auto",
) -> ComparisonReport:
    """Continue training copies of a float32 model in each precision and compare them.

    For every seed and precision, a fresh copy is made from the source's
    weights (:func:`copy_for_precision`), evaluated on the validation data
    (the starting point), seeded (:func:`seeded`) and trained with
    :func:`fp16cont.continue_training`. With ``measure_memory=True``, peak
    memory is measured during training only: GPU memory where the backend
    reports it, else the growth of the process's peak RSS
    (``resource.getrusage``, with the high-water mark reset before each run
    where Linux allows it); the report's ``memory_measure`` says which.
    Resetting those counters affects the whole process, so it is off unless
    asked for. Weights and optimizer state are reported separately, in bytes.

    The first training in a process pays one-time costs (thread pools,
    kernel caches: about 200 MiB of RSS and seconds of wall time for a
    ResNet-20 on a CPU) that would land on whichever precision runs first.
    ``warmup=True`` trains a throwaway copy in each precision for one batch
    beforehand, unmeasured, so that runs compare fairly whatever their order.
    JAX cannot reset its GPU peak-memory counter, so there the warm-up (and
    any earlier, larger run) hides a run's peak: for GPU memory figures on
    JAX, compare one precision per process with ``warmup=False``.

    Args:
        model: The float32 source: a built ``keras.Model`` or a ``.keras`` / ``.h5`` path.
        train_data: ``(x, y)`` numpy arrays.
        validation_data: ``(x, y)`` numpy arrays, or ``None``.
        precisions: Names from :data:`PRECISIONS`: ``"float32"``, ``"auto"``
            (the fast 16-bit format of this hardware), ``"float16"``,
            ``"bfloat16"`` (pure 16-bit, fp16cont), ``"mixed_float16"``,
            ``"mixed_bfloat16"`` (Keras mixed precision).
        epochs: Epochs of continued training per run.
        batch_size: Batch size (128, as in Continuous 16-bit Training).
        seeds: One run per seed and precision; repeat a seed to measure run-to-run noise.
        optimizer: As in :func:`~fp16cont.continue_training`; each run gets
            its own fresh copy of an optimizer instance. ``None``: the source's
            compiled optimizer settings, else SGD(0.01).
        loss: A loss, or ``None`` for the source's compiled loss.
        metrics: Metrics, or ``None`` for the source's compiled metrics, else ``["accuracy"]``.
        warmup: Train each precision for one unmeasured batch before the runs (see above).
        measure_memory: Measure each run's peak memory (resets the process's
            peak-memory counters before each run; see above).
        verbose: Keras' progress bar setting; unless 0, one line per run is printed too.

    Returns:
        A :class:`~fp16cont.reporting.results.ComparisonReport`.

    Raises:
        InvalidSourceError: If ``model`` is not a model or model file.
        ModelNotBuiltError: If the model was never built.
        AlreadyLowPrecisionError: If the model already has 16-bit variables.
        InvalidArgumentError: For bad ``precisions``, ``seeds``, ``epochs`` or ``batch_size``.
        MissingLossError: If ``loss`` is ``None`` and the source is not compiled with one.
        DataError: If the data are not ``(x, y)`` arrays of one length, or do
            not fit the model's input shape.

    Example:
        >>> report = compare(model, (x, y), (xt, yt), epochs=2,
        ...                  precisions=("float32", "bfloat16"))  # doctest: +SKIP
        >>> report.runs_for("bfloat16")[0].final.val_accuracy  # doctest: +SKIP
        0.91
    """
    source = _as_source(model)
    plans = resolve_precisions(precisions)
    seed_list = _check_seeds(seeds)
    _check_training_args(optimizer, loss, metrics, warmup)
    check_bool("measure_memory", measure_memory, "pass True to measure peak memory")
    (x, y), validation = _check_data(source, train_data, validation_data, batch_size, epochs)
    _check_loss(source, loss)
    metrics = metrics if metrics is not None or _compiled(source, "metrics") else ["accuracy"]
    device = detect_device()
    settings = _Settings(batch_size, optimizer, loss, metrics, verbose, measure_memory)
    talk = verbose not in (0, False)
    runs: list[RunRecord] = []
    method = "off"
    total = len(seed_list) * len(plans)
    # every copy is a new model (its layers draw seeds from Python's generator) and traces once
    with seeded(None), _no_retracing_warnings(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PerformanceWarning)  # said once, by resolve_precisions above
        if warmup:
            if talk:
                print(f"warm-up: one unmeasured batch of {', '.join(p.description for p in plans)}", flush=True)
            for plan in plans:
                _warm_up(source, plan, (x, y), validation, settings)
        for seed in seed_list:
            for plan in plans:
                if talk:
                    print(
                        f"[{len(runs) + 1}/{total}] {plan.description}, seed {seed}: "
                        f"{epochs} epoch(s) on {len(x):,} samples, batch {batch_size}",
                        flush=True,
                    )
                record, method = _run(source, plan, seed, (x, y), validation, epochs, settings)
                runs.append(record)
    return ComparisonReport(
        model_name=source.name,
        backend=keras.backend.backend(),
        device=f"{device.name} ({device.kind})",
        train_samples=len(x),
        validation_samples=len(validation[0]) if validation is not None else 0,
        batch_size=batch_size,
        memory_measure=f"{method}: {describe_method(method)}",
        runs=tuple(runs),
    )


class _RetracingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _no_retracing_warnings() -> Iterator[None]:
    """Drop TensorFlow's retracing warning, which fresh copies of one model trigger by design."""
    logger = logging.getLogger("tensorflow")
    only = _RetracingFilter()
    logger.addFilter(only)
    try:
        yield
    finally:
        logger.removeFilter(only)


class _InitialEvaluation(keras.callbacks.Callback):
    """Evaluates the compiled model on the validation data before the first epoch."""

    def __init__(self, x: Any, y: Any, batch_size: int) -> None:
        super().__init__()
        self.data, self.batch_size = (x, y), batch_size
        self.results: dict[str, float] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        values = self.model.evaluate(*self.data, batch_size=self.batch_size, verbose=0, return_dict=True)
        self.results = {k: float(v) for k, v in values.items()}


@dataclass(frozen=True)
class _Settings:
    """The training arguments shared by every run."""

    batch_size: int
    optimizer: Any
    loss: Any
    metrics: Any
    verbose: Any
    measure_memory: bool = False


def _train(
    model: keras.Model,
    train: Pair,
    validation: Pair | None,
    epochs: int,
    settings: _Settings,
    callbacks: list[keras.callbacks.Callback],
    verbose: Any,
    seed: int = 0,
) -> TrainingResult:
    return continue_training(
        model,
        *train,
        epochs=epochs,
        batch_size=settings.batch_size,
        optimizer=_fresh_optimizer(settings.optimizer),
        loss=settings.loss,
        metrics=_fresh_metrics(settings.metrics),
        validation_data=validation,
        callbacks=callbacks,
        verbose=verbose,
        seed=seed,
    )


def _warm_up(source: keras.Model, plan: PrecisionPlan, train: Pair, validation: Pair | None, settings: _Settings) -> None:
    """Train and evaluate a throwaway copy on one batch, so one-time backend costs land in no run."""
    rows = settings.batch_size
    model = copy_for_precision(source, plan)
    batch = (train[0][:rows], train[1][:rows])
    check = (validation[0][:rows], validation[1][:rows]) if validation is not None else None
    _train(model, batch, check, 1, settings, [], verbose=0)
    del model
    gc.collect()


def _run(
    source: keras.Model,
    plan: PrecisionPlan,
    seed: int,
    train: Pair,
    validation: Pair | None,
    epochs: int,
    settings: _Settings,
) -> tuple[RunRecord, str]:
    model = copy_for_precision(source, plan)
    initial = _InitialEvaluation(*validation, settings.batch_size) if validation is not None else None
    gc.collect()
    baseline = start_peak_memory() if settings.measure_memory else None
    callbacks: list[keras.callbacks.Callback] = [initial] if initial is not None else []
    with seeded(seed):
        result = _train(model, train, validation, epochs, settings, callbacks, settings.verbose, seed)
    peak = peak_memory_growth(baseline) if baseline is not None else PeakMemory(None, "off")
    record = _record(plan, seed, result, initial.results if initial is not None else {}, peak.bytes)
    del model, result
    gc.collect()
    return record, peak.method


def _record(plan: PrecisionPlan, seed: int, result: TrainingResult, initial: Mapping[str, float], peak: int | None) -> RunRecord:
    history = result.history.history
    key = _accuracy_key(history)

    def value(name: str | None, i: int) -> float | None:
        series = history.get(name) if name else None
        return float(series[i]) if series is not None and i < len(series) else None

    epochs = tuple(
        EpochRecord(
            epoch=i + 1,
            loss=float(history["loss"][i]),
            accuracy=value(key, i),
            val_loss=value("val_loss", i),
            val_accuracy=value(f"val_{key}" if key else None, i),
            seconds=float(seconds),
            samples_per_second=float(rate),
        )
        for i, (seconds, rate) in enumerate(zip(result.epoch_seconds, result.samples_per_second))
    )
    return RunRecord(
        precision=plan.label,
        requested=plan.requested,
        seed=seed,
        epochs=epochs,
        initial_val_loss=initial.get("loss"),
        initial_val_accuracy=initial.get(key) if key else None,
        weight_bytes=result.weight_bytes,
        optimizer_bytes=result.optimizer_bytes,
        peak_memory_bytes=peak,
        loss_scale=result.loss_scale,
        compensation=result.compensation,
        skipped_steps=result.skipped_steps,
        rollbacks=result.rollbacks,
    )


def _accuracy_key(history: Mapping[str, Any]) -> str | None:
    """The first training metric whose name says accuracy (``accuracy``, ``sparse_categorical_accuracy``, ``acc``)."""
    return next((k for k in history if not k.startswith("val_") and "acc" in k), None)


def _plan(name: object) -> PrecisionPlan:
    if not isinstance(name, str) or name not in PRECISIONS:
        raise InvalidArgumentError(
            f"Argument `precisions` should hold names from {', '.join(PRECISIONS)}. Received: "
            f"{name!r}. Fix: e.g. precisions=('float32', 'auto')."
        )
    if name == "float32":
        return PrecisionPlan(name, "float32", "float32")
    mode = "mixed" if name.startswith("mixed_") else "pure"
    chosen = select_precision(name.removeprefix("mixed_")).precision
    return PrecisionPlan(name, chosen, mode)


def _as_source(model: Any) -> keras.Model:
    source = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if not isinstance(source, keras.Model):
        raise InvalidSourceError(
            "Argument `model` should be a keras.Model or the path of a .keras/.h5 file. "
            f"Received: model of type {type(model).__name__}. Fix: pass the float32 model."
        )
    check_built(source)
    check_float32_source(
        [v.path for v in source.weights], [v.dtype for v in source.weights],
        f"Model {source.name!r} (the float32 reference)", "pass the float32 model the 16-bit one was built from.",
    )
    return source


def _check_training_args(optimizer: Any, loss: Any, metrics: Any, warmup: Any) -> None:
    """Check ``optimizer``, ``loss``, ``metrics`` and ``warmup`` before any copy is built or trained."""
    check_bool("warmup", warmup, "leave it True")
    if metrics is not None and not isinstance(metrics, (list, tuple, Mapping)):
        raise InvalidArgumentError(
            f"Argument `metrics` should be a list, tuple or dict of metrics, or None. Received: "
            f"metrics={metrics!r}. Fix: pass e.g. metrics=['accuracy']."
        )
    checks = (("optimizer", optimizer, keras.optimizers, "'sgd', 'adam' or keras.optimizers.SGD(0.01)"),
              ("loss", loss, keras.losses, "'sparse_categorical_crossentropy'"))
    for name, value, module, example in checks:
        if value is None:
            continue
        try:
            ok = module.get(value) is not None  # returns an instance as it is: nothing is built or changed
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            ok, detail = False, f" ({type(err).__name__}: {err})"
        else:
            detail = ""
        if not ok:
            raise InvalidArgumentError(
                f"Argument `{name}` is not a Keras {name}. Received: {name}={value!r}{detail}. "
                f"Fix: pass e.g. {example}, or None for the source model's compiled {name}."
            )


def _check_seeds(seeds: object) -> tuple[int, ...]:
    values = (seeds,) if isinstance(seeds, (int, np.integer)) else seeds
    try:
        result = tuple(values)  # type: ignore[arg-type]
    except TypeError:
        result = ()
    if not result or any(not is_int(s) or s < 0 for s in result):
        raise InvalidArgumentError(
            "Argument `seeds` should be a non-empty sequence of non-negative integers. "
            f"Received: seeds={seeds!r}. Fix: pass e.g. seeds=(0,) or seeds=(0, 1, 2)."
        )
    return tuple(int(s) for s in result)


def _check_data(
    source: keras.Model, train_data: Any, validation_data: Any, batch_size: int, epochs: int
) -> tuple[Pair, Pair | None]:
    train = _check_pair(train_data, "train_data")
    _check_input_shape(source, train[0], "train_data")
    check_fit_args(*train, batch_size, epochs)
    if validation_data is None:
        return train, None
    validation = _check_pair(validation_data, "validation_data")
    _check_input_shape(source, validation[0], "validation_data")
    sizes = (len(validation[0]), len(validation[1]))
    if sizes[0] == 0 or sizes[0] != sizes[1]:
        raise DataError(
            f"`validation_data` holds {sizes[0]} inputs and {sizes[1]} targets. Fix: pass a non-empty "
            "pair (x, y) of the same length, or validation_data=None."
        )
    return train, validation


def _check_pair(data: object, name: str) -> Pair:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and is_array_like(data[0]) and is_array_like(data[1])):
        raise DataError(
            f"Argument `{name}` should be a pair (x, y) of numpy arrays. Received: "
            f"{type(data).__name__}{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}. "
            f"Fix: pass {name}=(x, y), e.g. the pairs that fp16cont.load_dataset() returns."
        )
    return data[0], data[1]


def _check_input_shape(model: keras.Model, x: Any, name: str) -> None:
    expected = _input_shape(model)
    received = tuple(np.shape(x)[1:])
    if expected is None:
        return
    if len(expected) != len(received) or any(e is not None and e != r for e, r in zip(expected, received)):
        raise DataError(
            f"Model {model.name!r} takes samples of shape {_shape(expected)}, but `{name}` holds samples "
            f"of shape {_shape(received)}. Fix: build the model for this data (e.g. "
            f"fp16cont.resnet20(input_shape={_shape(received)})) or pass data of shape {_shape(expected)}."
        )


def _input_shape(model: keras.Model) -> tuple[int | None, ...] | None:
    inputs = getattr(model, "inputs", None)
    try:
        if inputs and len(inputs) == 1:
            return tuple(inputs[0].shape[1:])
    except (AttributeError, ValueError):
        pass
    return None  # several inputs or a subclassed model: Keras checks when fitting


def _shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _compiled(model: keras.Model, key: str) -> Any:
    return compile_config(model).get(key)


def _check_loss(source: keras.Model, loss: Any) -> None:
    if loss is None and not _compiled(source, "loss"):
        raise MissingLossError(
            f"Model {source.name!r} is not compiled with a loss and `loss` is None, so there is "
            "nothing to train against. Fix: pass loss=..., e.g. "
            "compare(model, ..., loss='sparse_categorical_crossentropy'), or compile the model first."
        )


def _fresh_optimizer(optimizer: Any) -> Any:
    """Each run trains its own optimizer: a copy from the config of an instance (names and configs as they are)."""
    return private_copy(optimizer) if isinstance(optimizer, keras.optimizers.Optimizer) else optimizer


def _fresh_metrics(metrics: Any) -> Any:
    """Metrics hold state: each run gets new instances made from their configs."""
    if isinstance(metrics, Mapping):
        return {k: _fresh_metrics(v) for k, v in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return type(metrics)(_fresh_metrics(m) for m in metrics)
    if isinstance(metrics, keras.metrics.Metric):
        return keras.metrics.deserialize(keras.metrics.serialize(metrics))
    return metrics
