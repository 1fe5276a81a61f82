"""The training engine behind :func:`~fp16cont.continue_training`.

One ``fit`` contract — callbacks, ``History``, the progress bar, validation,
class and sample weights, ``initial_epoch`` — with several ways to execute
the steps underneath, chosen per call:

- ``"resident"`` (JAX, array data that fits in device memory): the arrays are
  copied to the device once (``uint8`` images stay ``uint8``), each batch is
  gathered by index and cast on the device inside the compiled step, and
  ``steps_per_execution`` steps run in one compiled device loop over the
  model's stateless ``train_step`` with the state donated. The host dispatches one
  call per chunk and never waits in between.
- ``"streamed"`` (JAX, arrays too large for the device, ``tf.data.Dataset``
  or ``keras.utils.PyDataset``): the same scanned function fed with chunks
  of batches that a background thread gathers on the host and copies to the
  device ahead of time, in the data's own dtype, overlapped with compute.
- ``"compiled"`` (TensorFlow): Keras' own ``fit`` with ``steps_per_execution``
  steps per ``tf.function`` call (:mod:`fp16cont.training.tf_engine`).
- ``"fit"``: Keras' own ``model.fit`` (the torch backend,
  generators, or ``engine="fit"``).

Under an active ``keras.distribution`` (JAX) the resident and streamed modes
split each batch along its first axis over the mesh's batch axis and keep
the weights and optimizer state in the layouts Keras gave them; the
gradient sum over devices happens inside the compiled step, so loss-scale
and NaN decisions are one value for all replicas. With several
``jax.distributed`` processes each process streams its own rows.

Batch-level callbacks fire once per chunk of ``steps_per_execution`` steps
(``on_train_batch_begin(first)`` / ``on_train_batch_end(last, logs)``), as in
Keras' own ``fit`` with ``steps_per_execution``; epoch-level hooks fire every
epoch. The trained state is handed to callbacks through the JAX trainer's
own protocol: a callback that reads ``self.model`` sees the current weights,
and one that changes them (a rollback, a new learning rate) is respected.

Example:
    >>> Engine("resident", steps_per_execution=16).mode
    'resident'
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from fp16cont import _keras_compat as compat
from fp16cont.reporting.results import EngineChoice
from fp16cont.training.batchnorm import batchnorm_layers
from fp16cont.training.replica import BATCH_STATISTICS, replica_blocker, replica_train_step
from fp16cont.training.data import is_array_like, is_tf_dataset, split_rows
from fp16cont.errors import DataError, InvalidArgumentError, UnsupportedBackendError

__all__ = ["ENGINE_MODES", "Engine", "EngineChoice", "as_engine", "choose_engine", "fit_with_engine", "upload", "Resident"]

ENGINE_MODES: tuple[str, ...] = ("auto", "fit", "resident", "streamed", "compiled")
ACCELERATOR_STEPS_PER_EXECUTION = 32
_GATHER_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))  # host threads that gather streamed batches
_ENGINE_FIT_KWARGS = frozenset(
    {"shuffle", "class_weight", "sample_weight", "initial_epoch", "steps_per_epoch", "validation_split",
     "validation_freq", "validation_batch_size", "validation_steps"}
)


@dataclass(frozen=True)
class Engine:
    """How :func:`~fp16cont.continue_training` executes training steps.

    Args:
        mode: ``"auto"`` (the fastest correct mode for the backend and data),
            ``"fit"`` (Keras' own ``fit``), ``"resident"`` or ``"streamed"``
            (JAX only; see the module documentation), ``"compiled"``
            (TensorFlow: Keras' ``fit`` with ``steps_per_execution``; see
            :mod:`fp16cont.training.tf_engine`).
        steps_per_execution: Training steps per compiled call; ``None``: 32
            on GPUs and TPUs, 1 on CPUs (XLA:CPU runs convolutions inside
            loops slowly). Batch callbacks fire once per call.
        donate: Donate the training state to the compiled step, so no second
            copy of weights and optimizer state is held on the device.
        input_scale: Multiply floating and ``uint8`` inputs by this on the
            device after a cast to float32 (``1/255`` for raw images); by
            default inputs reach the model unchanged, as in ``fit``.
        input_offset: Added after ``input_scale``.
        preprocess: A JAX-traceable function applied to each input batch on
            the device (replaces ``input_scale``/``input_offset``).
        shuffle_seed: Seed of the per-epoch permutations: epoch ``e`` uses
            ``numpy.random.default_rng([shuffle_seed, e])``, the same for
            every model and for a resumed run.
        prefetch: Chunks the streamed mode prepares ahead of the device.
        max_resident_fraction: Largest share of device memory the resident
            data may take before ``"auto"`` streams it instead.
        batch_statistics: Under a JAX ``keras.distribution``, whose batch
            BatchNormalization normalises with: ``"global"`` (the whole
            batch's statistics, the one-device result, as Keras' own JAX
            ``fit`` computes them) or ``"replica"`` (each device's own rows,
            as ``synchronized=False`` documents and ``tf.distribute`` does;
            no cross-device reduction inside the forward pass, see
            :mod:`fp16cont.training.replica`). Without a distribution both
            are the same.

    Raises:
        InvalidArgumentError: For an unknown mode or a bad number.

    Example:
        >>> fp16cont.continue_training(m16, x, y, engine=Engine(steps_per_execution=64))  # doctest: +SKIP
    """

    mode: str = "auto"
    steps_per_execution: int | None = None
    donate: bool = True
    input_scale: float | None = None
    input_offset: float = 0.0
    preprocess: Callable[[Any], Any] | None = None
    shuffle_seed: int = 0
    prefetch: int = 2
    max_resident_fraction: float = 0.5
    batch_statistics: str = "global"

    def __post_init__(self) -> None:
        if self.mode not in ENGINE_MODES:
            raise InvalidArgumentError(
                f"Argument `engine` should be one of {ENGINE_MODES} or an fp16cont.Engine. Received: "
                f"{self.mode!r}. Fix: leave it 'auto', or pass engine='fit' for Keras' own fit."
            )
        for name in ("steps_per_execution", "prefetch"):
            value = getattr(self, name)
            if value is None and name == "steps_per_execution":
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise InvalidArgumentError(
                    f"Argument `{name}` should be a positive integer. Received: {name}={value!r}. "
                    f"Fix: pass e.g. {name}={32 if name == 'steps_per_execution' else 2}."
                )
        if self.batch_statistics not in BATCH_STATISTICS:
            raise InvalidArgumentError(
                f"Argument `batch_statistics` should be one of {BATCH_STATISTICS}. Received: {self.batch_statistics!r}. "
                "Fix: leave it 'global', or pass 'replica' for each device's own BatchNorm statistics."
            )
        if not 0 < float(self.max_resident_fraction) <= 1:
            raise InvalidArgumentError(
                f"Argument `max_resident_fraction` should be in (0, 1]. Received: {self.max_resident_fraction!r}. "
                "Fix: leave it 0.5."
            )


def as_engine(engine: Any) -> Engine:
    """Turn an ``engine`` argument (a mode name or an :class:`Engine`) into an :class:`Engine`.

    Raises:
        InvalidArgumentError: For anything else.
    """
    if isinstance(engine, Engine):
        return engine
    if isinstance(engine, str):
        return Engine(engine)
    raise InvalidArgumentError(
        f"Argument `engine` should be one of {ENGINE_MODES} or an fp16cont.Engine. Received: {engine!r}. "
        "Fix: leave it 'auto'."
    )


def choose_engine(engine: Engine, x: Any, fit_kwargs: dict[str, Any], model: keras.Model | None = None) -> EngineChoice:
    """Pick the execution mode for this backend, data and set of ``fit`` arguments.

    Args:
        engine: The requested engine.
        x: The training inputs.
        fit_kwargs: The extra ``fit`` keyword arguments of the call.
        model: The model to train; with it, ``batch_statistics="replica"``
            is checked against the chosen mode and said in the reason.

    Returns:
        The :class:`EngineChoice`.

    Raises:
        InvalidArgumentError: When ``"resident"``/``"streamed"`` is forced
            where it cannot run, or per-replica statistics were asked for
            where the chosen mode cannot give them.
    """
    choice = _choose_mode(engine, x, fit_kwargs)
    if model is None or not _replica_statistics_wanted(engine, model):
        return choice
    _refuse_replica_statistics(model, None)
    if choice.mode in ("fit", "compiled"):
        raise InvalidArgumentError(
            f"Engine(batch_statistics='replica') needs the resident or streamed mode, and this call runs Keras' fit "
            f"({choice.reason}), whose BatchNorm takes the global batch's statistics under a JAX distribution. "
            "Fix: pass array data, a tf.data.Dataset or a keras.utils.PyDataset with engine='auto', or leave "
            "batch_statistics='global'."
        )
    return EngineChoice(choice.mode, choice.steps_per_execution, choice.reason + "; BatchNorm statistics per replica",
                        choice.convolution_search)


def _replica_statistics_wanted(engine: Engine, model: keras.Model) -> bool:
    """Whether per-replica statistics were asked for and would change anything (a JAX mesh, BatchNorm)."""
    return (engine.batch_statistics == "replica" and keras.backend.backend() == "jax"
            and keras.distribution.distribution() is not None and bool(batchnorm_layers(model)))


def _refuse_replica_statistics(model: keras.Model, shardings: Any) -> None:
    """Raise :class:`InvalidArgumentError` when the per-replica step cannot train ``model`` (see :func:`replica_blocker`)."""
    why_not = replica_blocker(model, shardings)
    if why_not is not None:
        raise InvalidArgumentError(
            f"Engine(batch_statistics='replica') cannot train this model: {why_not}. Fix: leave batch_statistics='global'."
        )


def _choose_mode(engine: Engine, x: Any, fit_kwargs: dict[str, Any]) -> EngineChoice:
    backend = keras.backend.backend()
    if engine.mode == "fit":
        return EngineChoice("fit", 1, "engine='fit' was asked for")
    if engine.mode == "auto" and backend == "tensorflow" and _tf_strategy_active():
        # Keras 3's multi-step loop fails under MirroredStrategy ("You must feed a value for placeholder tensor")
        return EngineChoice("fit", 1, "Keras fit: a tf.distribute strategy is active (one step per call under it)")
    if engine.mode == "compiled" or (engine.mode == "auto" and backend == "tensorflow"):
        from fp16cont.training.tf_engine import choose_compiled  # Keras fit's loop, tuned (TensorFlow)

        return choose_compiled(engine, backend, fit_kwargs)
    forced = engine.mode != "auto"
    why_not = _why_not_jax_engine(backend, x, fit_kwargs, engine.mode)
    if why_not is not None:
        if forced:
            raise InvalidArgumentError(
                f"engine={engine.mode!r} cannot run here: {why_not}. Fix: leave engine='auto' (it falls back "
                "to Keras' fit) or pass engine='fit'."
            )
        search = _wants_convolution_search()
        return EngineChoice("fit", 1, f"Keras fit: {why_not}" + ("; cuDNN chooses convolution algorithms by "
                                                                 "measurement during the call" if search else ""), search)
    spe = engine.steps_per_execution or (1 if _platform() == "cpu" else ACCELERATOR_STEPS_PER_EXECUTION)
    if keras.distribution.distribution() is not None and _process_count() > 1:
        return EngineChoice("streamed", spe, f"data streamed: each of {_process_count()} processes feeds its own shard" + _over_mesh())
    if isinstance(x, Resident):
        return EngineChoice("resident", spe, "arrays already uploaded to the device" + _over_mesh())
    if is_array_like(x):
        fits = _fits_device(_nbytes(x), engine.max_resident_fraction)
        if engine.mode == "resident" or (engine.mode == "auto" and fits):
            return EngineChoice("resident", spe, "array data resident on the device" + _over_mesh())
        return EngineChoice("streamed", spe, "arrays streamed from host memory" + ("" if fits else " (too large for the device)") + _over_mesh())
    return EngineChoice("streamed", spe, f"{type(x).__name__} streamed to the device" + _over_mesh())


def _tf_strategy_active() -> bool:
    import tensorflow as tf

    return bool(tf.distribute.has_strategy())


def convolution_search(backend: str, device: str, deterministic: bool) -> bool:
    """Whether Keras' ``fit`` under the engine lets cuDNN pick convolution algorithms by measurement.

    Args:
        backend: ``keras.backend.backend()``.
        device: The device Keras' torch backend trains on (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
        deterministic: Whether the user asked torch for deterministic
            algorithms (``torch.use_deterministic_algorithms(True)`` or
            ``torch.backends.cudnn.deterministic``), which a search by timing
            would undo.

    Returns:
        ``True`` only for torch on a CUDA device without a determinism request.

    Example:
        >>> convolution_search("torch", "cuda", False), convolution_search("torch", "cuda", True)
        (True, False)
    """
    return backend == "torch" and device.startswith("cuda") and not deterministic


def _wants_convolution_search() -> bool:
    backend = keras.backend.backend()
    if backend != "torch":
        return False
    import torch

    deterministic = bool(torch.backends.cudnn.deterministic) or torch.are_deterministic_algorithms_enabled()
    return convolution_search(backend, compat.torch_device(), deterministic)


class SharedSwitch:
    """A process-wide on/off setting that is on while at least one call needs it.

    The first call to enter saves the setting and turns it on; the last to
    leave puts the saved value back, unless something else turned the
    setting off in between (that change is kept). Thread-safe.

    Args:
        read: Returns the setting's current value.
        write: Sets it.

    Example:
        >>> box = {"on": False}
        >>> switch = SharedSwitch(lambda: box["on"], lambda v: box.update(on=v))
        >>> with switch:
        ...     box["on"]
        True
        >>> box["on"]
        False
    """

    def __init__(self, read: Callable[[], bool], write: Callable[[bool], None]) -> None:
        self._read, self._write = read, write
        self._mutex = threading.Lock()
        self._users = 0
        self._saved = False

    def __enter__(self) -> None:
        with self._mutex:
            if self._users == 0:
                self._saved = self._read()
                self._write(True)
            self._users += 1

    def __exit__(self, *exc: Any) -> None:
        with self._mutex:
            self._users -= 1
            if self._users == 0 and self._read() is True:
                self._write(self._saved)


def _set_cudnn_benchmark(value: bool) -> None:
    import torch

    torch.backends.cudnn.benchmark = value


def _cudnn_benchmark() -> bool:
    import torch

    return bool(torch.backends.cudnn.benchmark)


_CUDNN_SEARCH = SharedSwitch(_cudnn_benchmark, _set_cudnn_benchmark)


def tuned_convolutions(choice: EngineChoice) -> contextlib.AbstractContextManager[None]:
    """Keras ``fit`` on torch with CUDA: cuDNN picks each convolution's algorithm by measurement.

    ``torch.backends.cudnn.benchmark`` is process-wide: it is on while at
    least one such call runs (so a concurrent ``engine="fit"`` call in
    another thread runs with it too) and goes back to the user's setting
    when the last one ends (:class:`SharedSwitch`). Measured on an H200
    (ResNet-20, float16 defaults): 0.76x -> 0.92x Keras float32 ``fit``.
    Only when the engine was chosen (``engine="auto"``) and torch was not
    asked for deterministic algorithms.

    Args:
        choice: The engine's choice (``convolution_search`` says whether this applies).

    Returns:
        A context manager to run the call in.

    Example:
        >>> with tuned_convolutions(EngineChoice("fit", 1, "engine='fit' was asked for")):
        ...     pass
    """
    return _CUDNN_SEARCH if choice.convolution_search else contextlib.nullcontext()


def _why_not_jax_engine(backend: str, x: Any, fit_kwargs: dict[str, Any], mode: str) -> str | None:
    if backend != "jax":
        return f"the resident and streamed engines run on Keras' JAX backend, this process uses {backend!r}"
    distribution = keras.distribution.distribution()
    if distribution is not None and getattr(distribution, "batch_dim_name", None) is None:
        return f"the active {type(distribution).__name__} names no batch axis to shard the data along"
    if distribution is not None and mode == "resident" and _process_count() > 1:
        return "resident mode keeps one copy of the data per device; with several processes each one streams its own shard"
    unknown = sorted(set(fit_kwargs) - _ENGINE_FIT_KWARGS)
    if unknown:
        return f"fit arguments {unknown} are only handled by Keras' fit"
    if is_array_like(x) or isinstance(x, Resident):
        return None
    if is_tf_dataset(x) or isinstance(x, keras.utils.PyDataset):
        if mode == "resident":
            return f"resident mode needs arrays, not a {type(x).__name__}"
        if fit_kwargs.get("validation_split"):
            return "validation_split needs array data"
        return None
    return f"{type(x).__name__} inputs are fed by Keras' fit"


# -- distribution ----------------------------------------------------------------
@dataclass(frozen=True)
class _Placement:
    """Where batches and the training state live under an active ``keras.distribution``.

    Each batch is split along its first axis over the mesh's batch axis (the
    data layout of ``DataParallel`` and ``ModelParallel``); the weights and
    optimizer state keep the layout Keras gave them (replicated for
    ``DataParallel``, the ``LayoutMap``'s for ``ModelParallel``). With several
    processes each one passes its own rows: a global batch is the
    concatenation of the processes' batches, as in Keras' ``fit``.
    """

    mesh: Any
    batch_axis: str
    shards: int
    processes: int

    def sharding(self, *spec: Any) -> Any:
        """A ``NamedSharding`` on the mesh (no ``spec``: replicated)."""
        import jax

        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    def splits(self, global_rows: int) -> bool:
        """Whether a batch of ``global_rows`` rows divides evenly over the batch axis."""
        return global_rows % self.shards == 0

    def put(self, tree: Any, leading: int = 1) -> Any:
        """Place host batches: axis ``leading`` (the batch axis) split over the mesh.

        A batch whose rows do not divide over the devices (a last partial
        batch) is replicated instead: every device computes it whole, which
        gives the same result. With several processes that cannot be done
        (each holds other rows), and a :class:`DataError` says so.
        """
        import jax

        def leaf(a: Any) -> Any:
            a = np.asarray(a) if not isinstance(a, jax.Array) else a
            rows = int(a.shape[leading]) * self.processes
            if self.splits(rows):
                sharding = self.sharding(*([None] * leading), self.batch_axis)
            elif self.processes == 1:
                sharding = self.sharding()
            else:
                raise DataError(
                    f"A batch of {a.shape[leading]} rows per process does not split over the {self.shards} devices of "
                    f"the mesh's {self.batch_axis!r} axis. Fix: give every process the same number of rows and a batch "
                    "size that is a multiple of its local device count, or pass steps_per_epoch to leave out the last "
                    "partial batch."
                )
            if self.processes > 1:
                return jax.make_array_from_process_local_data(sharding, np.asarray(a))
            return jax.device_put(a, sharding)

        return jax.tree_util.tree_map(leaf, tree)

    def replicate(self, tree: Any) -> Any:
        """The same arrays on every device of the mesh (every process passes the same values)."""
        import jax

        sharding = self.sharding()
        if self.processes > 1:
            return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)
        return jax.device_put(tree, sharding)

    def constrain(self, batch: Any) -> Any:
        """Inside the compiled step: keep a gathered batch split along its first axis."""
        import jax

        def leaf(a: Any) -> Any:
            if a.ndim and self.splits(int(a.shape[0])):
                return jax.lax.with_sharding_constraint(a, self.sharding(self.batch_axis))
            return a

        return jax.tree_util.tree_map(leaf, batch)


def _placement() -> _Placement | None:
    """The :class:`_Placement` of the active ``keras.distribution``, or ``None``."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    mesh = distribution.device_mesh.backend_mesh
    axis = distribution.batch_dim_name
    return _Placement(mesh, axis, int(mesh.shape[axis]), _process_count())


def _process_count() -> int:
    import jax

    return int(jax.process_count())


def _over_mesh() -> str:
    distribution = keras.distribution.distribution()
    if distribution is None:
        return ""
    mesh = distribution.device_mesh
    shape = " x ".join(f"{n} {name}" for n, name in zip(mesh.shape, mesh.axis_names))
    return f", batches split over {type(distribution).__name__} mesh ({shape})"


def _state_shardings(model: keras.Model, placement: _Placement) -> tuple[list[Any], ...]:
    """The layout of every state variable: its own when on the mesh, else the distribution's for it."""
    import jax

    distribution = keras.distribution.distribution()

    def target(variable: Any) -> Any:
        sharding = getattr(variable.value, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == placement.mesh:
            return sharding
        layout = distribution.get_variable_layout(variable)
        return layout.backend_layout if layout is not None else placement.sharding()

    return tuple([target(v) for v in group] for group in _state_variables(model))


def _state_variables(model: keras.Model) -> tuple[list[Any], ...]:
    return (list(model.trainable_variables), list(model.non_trainable_variables),
            list(model.optimizer.variables), list(model.metrics_variables))


def _lay_out_state(model: keras.Model, shardings: tuple[list[Any], ...]) -> None:
    """Move variables made before the distribution was set onto the mesh, in the distribution's layout."""
    import jax

    for group, targets in zip(_state_variables(model), shardings):
        for variable, target in zip(group, targets):
            if not variable.value.sharding.is_equivalent_to(target, len(variable.shape)):
                host = np.asarray(jax.device_get(variable.value))
                variable.assign(jax.make_array_from_callback(host.shape, target, lambda index, h=host: h[index]))


# -- the loop ------------------------------------------------------------------
def fit_with_engine(
    model: keras.Model,
    x: Any,
    y: Any,
    *,
    choice: EngineChoice,
    engine: Engine,
    epochs: int,
    batch_size: int,
    validation_data: Any,
    callbacks: list[keras.callbacks.Callback],
    verbose: Any,
    fit_kwargs: dict[str, Any],
) -> keras.callbacks.History:
    """Train like ``model.fit`` with the resident or streamed executor.

    Args:
        model: A compiled, built model.
        x: Inputs (arrays, a list/dict of arrays, a :class:`Resident`, a
            ``tf.data.Dataset`` or a ``keras.utils.PyDataset``).
        y: Targets for array inputs.
        choice: From :func:`choose_engine`.
        engine: The engine options.
        epochs: Last epoch (exclusive), as in ``fit``.
        batch_size: Batch size for arrays.
        validation_data: As in ``fit``.
        callbacks: Callbacks (user's and fp16cont's).
        verbose: As in ``fit``.
        fit_kwargs: ``shuffle``, ``class_weight``, ``sample_weight``,
            ``initial_epoch``, ``steps_per_epoch``, ``validation_split``,
            ``validation_freq``, ``validation_batch_size``, ``validation_steps``.

    Returns:
        The run's ``keras.callbacks.History`` (also ``model.history``).

    Raises:
        DataError: For data the executor cannot feed.
    """
    jax, jnp = _jax()
    kw = dict(fit_kwargs)
    sample_weight, class_weight = kw.pop("sample_weight", None), kw.pop("class_weight", None)
    split = kw.pop("validation_split", 0.0)
    if split and validation_data is None:
        (x, y, sample_weight), validation_data = _split(x, y, sample_weight, split)
    shuffle = kw.pop("shuffle", True)
    feeder: _Feeder
    placement = _placement()
    if choice.mode == "resident":
        feeder = _ResidentFeeder(x, y, sample_weight, class_weight, batch_size, shuffle, engine, kw.get("steps_per_epoch"), choice.steps_per_execution, placement)
    else:
        feeder = _StreamFeeder(x, y, sample_weight, class_weight, batch_size, shuffle, engine, kw.get("steps_per_epoch"), choice.steps_per_execution, placement,
                               epochs=(int(kw.get("initial_epoch", 0) or 0), epochs))
    try:  # the streamed feeder's threads have started: a failure before training stops them
        prep = _preprocess(engine, feeder.uint8_inputs)
        _build(model, feeder.example_batch(), prep, jax)
        shardings = settle = None
        if placement is not None:
            shardings = _state_shardings(model, placement)
            _lay_out_state(model, shardings)
        train_step = _train_step(model, engine, placement, shardings)
        run = _compiled_steps(model, prep, engine, choice.mode == "resident", jax, jnp, placement, shardings, train_step)
        if placement is not None:
            cache, key = _COMPILED[model], ("settle", tuple(tuple(group) for group in shardings))
            if key not in cache:
                cache[key] = jax.jit(lambda state: state, out_shardings=shardings)
            settle = cache[key]
        logs_like = _logs_structure(model, jnp, placement)

        cbs = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose,
            epochs=epochs, steps=feeder.steps_per_epoch, model=model,
        )
        model.stop_training = False
        cbs.on_train_begin()
    except BaseException:
        feeder.close()
        raise
    epoch_logs: dict[str, Any] = {}
    finished = False
    try:
        for epoch in range(int(kw.get("initial_epoch", 0) or 0), epochs):
            model.reset_metrics()
            cbs.on_epoch_begin(epoch)
            state = _pending(model, settle)
            logs = None
            for begin, end, chunk in feeder.epoch(epoch):
                cbs.on_train_batch_begin(begin)
                state = _pending(model, settle) if compat.jax_state_was_synced(model) else state
                *where, loop = chunk
                state, logs = run(state, feeder.resident, *where, logs_like, loop)
                compat.set_pending_jax_state(model, state)
                cbs.on_train_batch_end(end, logs)
                state = _pending(model, settle) if compat.jax_state_was_synced(model) else state
                if model.stop_training:
                    break
            model.jax_state_sync()
            epoch_logs = dict(model.get_metrics_result()) if logs is not None else {}
            if validation_data is not None and _should_validate(epoch, kw.get("validation_freq", 1)):
                epoch_logs.update(_validate(model, validation_data, kw, batch_size, cbs))
            cbs.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        finished = True
    finally:
        feeder.close()
        compat.clear_jax_state(model)
        if epochs > 0 and model.optimizer is not None:
            model.optimizer.finalize_variable_values(model.trainable_weights)
        if finished:
            cbs.on_train_end(logs=epoch_logs)
    return model.history


def _pending(model: keras.Model, settle: Callable[[Any], Any] | None = None) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Read the variables as the loop's state and hand it back as pending (unsynced).

    ``settle`` (on a mesh) passes the state through a compiled identity with
    the step's output layouts, so that fresh values (reset metrics, a
    callback's assignment) reach the step in the same form as its own
    outputs and do not make JAX compile it again.
    """
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    if settle is not None:
        state = settle(state)
    compat.set_pending_jax_state(model, state)
    return state


def _should_validate(epoch: int, freq: Any) -> bool:
    if isinstance(freq, int):
        return (epoch + 1) % freq == 0
    return epoch + 1 in freq


def _validate(model: keras.Model, validation_data: Any, kw: dict[str, Any], batch_size: int, cbs: Any) -> dict[str, Any]:
    if isinstance(validation_data, (tuple, list)) and not is_tf_dataset(validation_data):
        vx, vy, vsw = keras.utils.unpack_x_y_sample_weight(tuple(validation_data))
    else:
        vx, vy, vsw = validation_data, None, None
    logs = model.evaluate(
        x=vx, y=vy, sample_weight=vsw, batch_size=kw.get("validation_batch_size") or batch_size,
        steps=kw.get("validation_steps"), callbacks=cbs, return_dict=True, verbose=0,
    )
    return {f"val_{name}": value for name, value in logs.items()}


def _split(x: Any, y: Any, sample_weight: Any, split: float) -> tuple[tuple[Any, Any, Any], tuple[Any, ...]]:
    """Keras' ``validation_split``: the last ``split`` share of the arrays validates."""
    if not (is_array_like(x) and 0 < float(split) < 1):
        raise DataError(
            f"validation_split={split!r} needs array inputs and a value in (0, 1). Fix: pass "
            "validation_data=(x_val, y_val) instead."
        )
    cut = split_rows(_rows(x), split)
    head = lambda d: None if d is None else _tree_map(lambda a: a[:cut], d)  # noqa: E731
    tail = lambda d: None if d is None else _tree_map(lambda a: a[cut:], d)  # noqa: E731
    validation = (tail(x), tail(y)) if sample_weight is None else (tail(x), tail(y), tail(sample_weight))
    return (head(x), head(y), head(sample_weight)), validation


# -- compiled steps --------------------------------------------------------------
_COMPILED: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _train_step(model: keras.Model, engine: Engine, placement: _Placement | None, shardings: Any) -> Callable[[Any, Any], Any] | None:
    """The per-replica step when ``batch_statistics="replica"`` applies on a mesh, else ``None`` (Keras' own ``train_step``).

    Raises:
        InvalidArgumentError: When per-replica statistics were asked for a
            model the per-replica step cannot train.
    """
    if placement is None or not _replica_statistics_wanted(engine, model):
        return None  # nothing would differ
    _refuse_replica_statistics(model, shardings)
    return replica_train_step(model, placement.mesh, placement.batch_axis)


def _compiled_steps(model: keras.Model, prep: Callable[[Any], Any], engine: Engine, resident: bool, jax: Any, jnp: Any,
                    placement: _Placement | None = None, shardings: Any = None,
                    train_step: Callable[[Any, Any], Any] | None = None) -> Callable[..., Any]:
    """The jitted multi-step function, kept per model until it is recompiled.

    ``run(state, arrays, chunk, start, count, logs, loop)``: with ``loop``
    the ``count`` steps (a traced number, so chunks of any length share one
    compilation) run in a ``fori_loop`` on the device, carrying ``logs`` (the
    metric results, whose structure the model's ``get_metrics_result()``
    gives without a second trace of the step); without it one step runs with
    no loop around it (XLA:CPU runs convolutions inside loops far more
    slowly). ``chunk`` holds the batches' row indices into the resident
    ``arrays`` (resident mode) or the stacked batches themselves (streamed).

    Under a ``keras.distribution`` (``placement``) each batch is split along
    its first axis over the mesh and the state keeps its layout
    (``shardings``); the gradients are then summed over the devices inside
    the step, so the loss-scale and finiteness decisions are one value for
    all replicas. ``train_step`` (from :func:`_train_step`) replaces Keras'
    own step: the per-replica one of ``batch_statistics="replica"``.
    """
    compiled_with = (id(model.optimizer), id(model.loss), model.compiled)
    cache = _COMPILED.get(model)
    if cache is None or cache.get("compiled_with") != compiled_with:
        cache = {"compiled_with": compiled_with}
        _COMPILED[model] = cache
    step = train_step or model.train_step  # Keras' own unless the per-replica step is given
    key = (resident, engine.donate, engine.preprocess, engine.input_scale, engine.input_offset, placement,
           None if shardings is None else tuple(tuple(group) for group in shardings), train_step is not None)
    if key in cache:
        return cache[key]

    def steps(state: Any, arrays: Any, chunk: Any, start: Any, count: Any, logs: Any, loop: bool) -> Any:
        def batch(i: Any) -> Any:
            if resident:
                index = jax.lax.dynamic_index_in_dim(chunk, start + i, axis=0, keepdims=False)
                picked = jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), arrays)
            else:
                picked = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, start + i, axis=0, keepdims=False), chunk)
            return picked if placement is None else placement.constrain(picked)

        def one(carry: Any, i: Any) -> Any:
            x, y, sw = batch(i)
            data = (prep(x), y) if sw is None else (prep(x), y, sw)
            logs, carry = step(carry, data)
            return carry, logs

        if not loop:
            return one(state, 0)
        return jax.lax.fori_loop(0, count, lambda i, carry: one(carry[0], i), (state, logs))

    out_shardings = None if placement is None else (shardings, placement.sharding())
    compiled = jax.jit(steps, static_argnums=(6,), donate_argnums=(0,) if engine.donate else (), out_shardings=out_shardings)
    cache[key] = compiled
    return compiled


def _logs_structure(model: keras.Model, jnp: Any, placement: _Placement | None = None) -> Any:
    """Zeros shaped like ``train_step``'s logs: the model's metric results (replicated on a mesh)."""
    results = model.get_metrics_result()
    if placement is not None:
        return placement.replicate({name: np.zeros(np.shape(value), np.asarray(value).dtype) for name, value in results.items()})
    return {name: jnp.zeros(np.shape(value), jnp.asarray(value).dtype) for name, value in results.items()}


def _build(model: keras.Model, batch: Any, prep: Callable[[Any], Any], jax: Any) -> None:
    """Create the metric, loss and optimizer variables, as ``fit`` does before its first step."""
    x, y, sw = batch
    x = jax.tree_util.tree_map(np.asarray, jax.device_get(prep(x)))
    data = (x, y) if sw is None else (x, y, sw)
    compat.symbolic_build(model, data)  # a no-op once built
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _preprocess(engine: Engine, uint8_inputs: bool) -> Callable[[Any], Any]:
    if engine.preprocess is not None:
        return engine.preprocess
    scale, offset = engine.input_scale, engine.input_offset
    if scale is None and not offset:
        return _identity
    import jax
    import jax.numpy as jnp

    def leaf(a: Any) -> Any:
        if not (jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == jnp.uint8):
            return a  # token ids and other integers pass untouched
        out = a.astype(jnp.float32)
        if scale is not None and scale != 1.0:
            out = out * jnp.float32(scale)
        if offset:
            out = out + jnp.float32(offset)
        return out

    return lambda batch: jax.tree_util.tree_map(leaf, batch)


def _identity(batch: Any) -> Any:
    return batch


# -- feeding -----------------------------------------------------------------------
class Resident:
    """Training arrays already on the device (see :func:`upload`), with their row count."""

    def __init__(self, arrays: Any, rows: int) -> None:
        self.arrays = arrays
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    @property
    def uint8(self) -> bool:
        """Whether every array is ``uint8``."""
        import jax

        return all(str(a.dtype) == "uint8" for a in jax.tree_util.tree_leaves(self.arrays))


def upload(data: Any) -> Resident:
    """Copy training arrays to the device once, for repeated resident runs.

    ``float64`` becomes ``float32`` and ``int64`` becomes ``int32`` on the host
    first (JAX would do the same); everything else keeps its dtype, so
    ``uint8`` images take a quarter of the device memory of float32.

    Args:
        data: A numpy or JAX array, or a list, tuple or dict of them.

    Returns:
        A handle that ``continue_training`` (resident engine) and
        :func:`~fp16cont.device_fit` accept as ``x`` or ``y``.

    Raises:
        UnsupportedBackendError: On a backend other than JAX.
        DataError: For empty or ragged data, or data too large for the device.

    Example:
        >>> xs = upload(x_uint8)  # doctest: +SKIP
    """
    if isinstance(data, Resident):
        return data
    if keras.backend.backend() != "jax":
        raise UnsupportedBackendError(
            f"upload() keeps arrays on a JAX device; this process uses the {keras.backend.backend()!r} backend. "
            "Fix: set KERAS_BACKEND=jax before keras is first imported, or pass numpy arrays to continue_training()."
        )
    jax, _ = _jax()
    prepared = _host_arrays(data)
    nbytes = _nbytes(prepared)
    if not _fits_device(nbytes, 0.5):
        raise DataError(
            f"The training data takes {nbytes / 2**30:.2f} GiB, more than half of the device's memory. Fix: keep "
            "images as uint8, or pass the numpy arrays to continue_training(), which streams them."
        )
    return Resident(jax.device_put(prepared), _rows(prepared))


def _host_arrays(data: Any) -> Any:
    """Numpy views of array data, float64 -> float32 and int64 -> int32 (as JAX would)."""
    import jax

    leaves = jax.tree_util.tree_leaves(data)
    if not leaves or any(not hasattr(a, "shape") or len(a.shape) == 0 for a in leaves):
        raise DataError(
            "The resident engine needs arrays with one row per sample, or a list/dict of them. "
            f"Received: {type(data).__name__}. Fix: pass x and y as numpy arrays."
        )
    rows = {int(a.shape[0]) for a in leaves}
    if len(rows) != 1:
        raise DataError(f"The arrays have different numbers of rows: {sorted(rows)}. Fix: pass one row per sample in each.")

    def host(a: Any) -> Any:
        if isinstance(a, jax.Array):
            return a
        a = np.asarray(a)
        if a.dtype == np.float64:
            return a.astype(np.float32)
        if a.dtype == np.int64:
            return a.astype(np.int32)
        return a

    return jax.tree_util.tree_map(host, data)


class _Feeder:
    resident: Any = None
    steps_per_epoch: int | None = None
    uint8_inputs: bool = False

    def example_batch(self) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def epoch(self, epoch: int) -> Iterator[tuple[int, int, tuple[Any, Any, int]]]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work."""


def _permutation(engine: Engine, epoch: int, n: int, shuffle: Any) -> np.ndarray:
    if shuffle:
        return np.random.default_rng([engine.shuffle_seed, epoch]).permutation(n).astype(np.int32)
    return np.arange(n, dtype=np.int32)


def _epoch_plan(n: int, batch_size: int, steps_per_epoch: int | None) -> tuple[int, int]:
    full, remainder = divmod(n, batch_size)
    if steps_per_epoch is not None:
        full, remainder = min(full, int(steps_per_epoch)), (remainder if steps_per_epoch > full else 0)
    return full, remainder


def _chunks(full: int, spe: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each chunk of ``full`` batches."""
    return [(s, min(spe, full - s)) for s in range(0, full, spe)]


class _ResidentFeeder(_Feeder):
    def __init__(self, x: Any, y: Any, sw: Any, class_weight: Any, batch_size: int, shuffle: Any,
                 engine: Engine, steps_per_epoch: int | None, spe: int, placement: _Placement | None = None) -> None:
        import jax

        xs = x.arrays if isinstance(x, Resident) else _host_arrays(x)
        ys = y.arrays if isinstance(y, Resident) else _host_arrays(y)
        if sw is None and class_weight is not None:
            sw = _class_weights(jax.device_get(ys), class_weight)
        arrays = (xs, ys, None if sw is None else _host_arrays(sw))
        rows = {int(a.shape[0]) for a in jax.tree_util.tree_leaves(arrays)}
        if len(rows) != 1:
            raise DataError(f"`x`, `y` and the sample weights have different numbers of rows: {sorted(rows)}. Fix: pass one row per sample in each.")
        self.n = rows.pop()
        self.uint8_inputs = all(str(a.dtype) == "uint8" for a in jax.tree_util.tree_leaves(xs))
        self._host_example = jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a[:batch_size])), arrays)
        # on a mesh every device holds all rows; the batch indices are split over the devices
        self.resident = jax.device_put(arrays) if placement is None else placement.replicate(arrays)
        self._put = jax.device_put if placement is None else placement.put
        self.batch_size, self.shuffle, self.engine, self.spe = batch_size, shuffle, engine, spe
        self.full, self.remainder = _epoch_plan(self.n, batch_size, steps_per_epoch)
        self.steps_per_epoch = self.full + (1 if self.remainder else 0)

    def example_batch(self) -> tuple[Any, Any, Any]:
        return self._host_example

    def epoch(self, epoch: int) -> Iterator[tuple[int, int, tuple[Any, ...]]]:
        import jax

        order = _permutation(self.engine, epoch, self.n, self.shuffle)
        b = self.batch_size
        loop = self.spe > 1
        if self.full:
            batches = self._put(order[: self.full * b].reshape(self.full, b))
            for start, count in _chunks(self.full, self.spe):
                yield start, start + count - 1, (batches, np.int32(start), np.int32(count), loop)
        if self.remainder:
            last = self._put(order[self.full * b : self.full * b + self.remainder].reshape(1, self.remainder))
            yield self.full, self.full, (last, np.int32(0), np.int32(1), False)


class _StreamFeeder(_Feeder):
    """Chunks of batches prepared on the host by a thread and copied to the device ahead.

    For arrays the chunk order of every epoch is known in advance, so one
    background stream runs through all of ``epochs``: the first chunks are
    prepared while the step compiles, and each epoch's first chunks while the
    previous epoch's last ones train. Datasets, whose next epoch may depend on
    the end of this one, get one stream per epoch.
    """

    def __init__(self, x: Any, y: Any, sw: Any, class_weight: Any, batch_size: int, shuffle: Any,
                 engine: Engine, steps_per_epoch: int | None, spe: int, placement: _Placement | None = None,
                 epochs: tuple[int, int] | None = None) -> None:
        self.engine, self.spe, self.shuffle, self.batch_size = engine, spe, shuffle, batch_size
        self.placement = placement
        self.class_weight = class_weight
        self._limit = steps_per_epoch
        self._threads: list[_Prefetcher] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(_GATHER_THREADS, thread_name_prefix="fp16cont-gather")
        if is_array_like(x) or isinstance(x, Resident):
            self.arrays = (_host_arrays(x.arrays if isinstance(x, Resident) else x),
                           _host_arrays(y.arrays if isinstance(y, Resident) else y),
                           None if sw is None else _host_arrays(sw))
            if sw is None and class_weight is not None:
                self.arrays = (self.arrays[0], self.arrays[1], _class_weights(self.arrays[1], class_weight))
            self.n = _rows(self.arrays[0])
            full, remainder = _epoch_plan(self.n, batch_size, steps_per_epoch)
            self.steps_per_epoch = full + (1 if remainder else 0)
            self._chunks_per_epoch = len(_chunks(full, spe)) + (1 if remainder else 0)  # what _host_chunks yields
            self.source = None
        else:
            self.arrays = None
            self.source = x
            self.steps_per_epoch = _dataset_steps(x, steps_per_epoch)
        if self.arrays is not None:
            self._example = _tree_map(lambda a: np.asarray(a[: self.batch_size]), self.arrays)
        else:
            self._example = self._with_weights(next(iter(_batches(self.source))))  # read the source once
        import jax

        self.uint8_inputs = all(str(np.asarray(a).dtype) == "uint8" for a in jax.tree_util.tree_leaves(self._example[0]))
        self._epochs = epochs
        self._stream: _Prefetcher | None = None
        self._stream_epoch = -1  # the epoch of the stream's next chunk
        if self.arrays is not None and epochs is not None and epochs[0] < epochs[1]:
            self._open_stream(epochs[0])

    def example_batch(self) -> tuple[Any, Any, Any]:
        return self._example

    def _open_stream(self, first: int) -> _Prefetcher:
        """Start preparing the chunks of epochs ``first`` up to the run's last, in order."""
        self.close_stream()
        last = self._epochs[1] if self._epochs is not None else first + 1
        chunks = ((e, *chunk) for e in range(first, max(last, first + 1)) for chunk in self._host_chunks(e))
        self._stream, self._stream_epoch = self._prefetcher(chunks), first
        return self._stream

    def _with_weights(self, batch: Any) -> tuple[Any, Any, Any]:
        x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
        x, y, sw = (_tree_map(np.asarray, d) if d is not None else None for d in (x, y, sw))
        if sw is None and self.class_weight is not None and y is not None:
            sw = _class_weights(y, self.class_weight)
        return x, y, sw

    def _host_chunks(self, epoch: int) -> Iterator[tuple[int, int, Any]]:
        """``(first step, count, stacked host batches)`` for one epoch.

        Chunks of full batches are padded to ``steps_per_execution`` batches
        (the padding is never trained on), so they share one compilation.
        """
        if self.arrays is not None:
            order = _permutation(self.engine, epoch, self.n, self.shuffle)
            full, remainder = _epoch_plan(self.n, self.batch_size, self._limit)
            b = self.batch_size
            for start, count in _chunks(full, self.spe):
                index = order[start * b : (start + count) * b]
                rows = self.spe * b if self.spe > 1 else count * b
                yield start, count, _tree_map(lambda a: _gather(a, index, rows, self._pool).reshape(rows // b, b, *a.shape[1:]), self.arrays)
            if remainder:
                index = order[full * b : full * b + remainder]
                yield full, 1, _tree_map(lambda a: np.take(a, index, axis=0)[None], self.arrays)
            return
        pending: list[Any] = []
        step = 0
        for i, batch in enumerate(_batches(self.source)):
            if self._limit is not None and i >= self._limit:
                break
            batch = self._with_weights(batch)
            if pending and (_shapes(batch) != _shapes(pending[0]) or len(pending) == self.spe):
                yield step, len(pending), self._stack(pending)
                step += len(pending)
                pending = []
            pending.append(batch)
        if pending:
            yield step, len(pending), self._stack(pending)
        if isinstance(self.source, keras.utils.PyDataset):
            self.source.on_epoch_end()

    def _stack(self, batches: list[Any]) -> Any:
        if self.spe > 1 and len(batches) > 1:
            batches = batches + [batches[-1]] * (self.spe - len(batches))  # padding, never trained on
        return _stack(batches)

    def _prefetcher(self, chunks: Iterator[tuple[Any, ...]]) -> _Prefetcher:
        prefetcher = _Prefetcher(chunks, self.engine.prefetch, None if self.placement is None else self.placement.put)
        self._threads.append(prefetcher)
        return prefetcher

    def _chunk(self, start: int, count: int, device_chunk: Any) -> tuple[int, int, tuple[Any, Any, Any, bool]]:
        loop = self.spe > 1 and count > 1 or _leading(device_chunk) > count
        return start, start + count - 1, (device_chunk, np.int32(0), np.int32(count), loop)

    def epoch(self, epoch: int) -> Iterator[tuple[int, int, tuple[Any, Any, int]]]:
        if self.arrays is None:
            yield from self._dataset_epoch(epoch)
            return
        stream = self._stream if self._stream is not None and self._stream_epoch == epoch else self._open_stream(epoch)
        left, finished = self._chunks_per_epoch, False
        if not left:  # nothing to train on: the next epoch's chunks stay queued
            return
        try:
            for _, *chunk in stream:  # exactly this epoch's chunks: the next epoch's stay queued
                left -= 1
                yield self._chunk(*chunk)
                if not left:
                    break
            finished = True
        finally:
            self._stream_epoch = epoch + 1
            if not finished:  # left mid-epoch: what was read ahead is dropped
                self.close_stream()

    def _dataset_epoch(self, epoch: int) -> Iterator[tuple[int, int, tuple[Any, Any, int]]]:
        prefetcher = self._prefetcher(self._host_chunks(epoch))
        try:
            for start, count, device_chunk in prefetcher:
                yield self._chunk(start, count, device_chunk)
        finally:
            prefetcher.stop()
            self._threads.remove(prefetcher)

    def close_stream(self) -> None:
        """Stop the array stream and drop the chunks it read ahead."""
        if self._stream is not None:
            self._stream.stop()
            self._threads.remove(self._stream)
        self._stream = None

    def close(self) -> None:
        self.close_stream()
        for thread in list(self._threads):
            thread.stop()
        self._pool.shutdown(wait=False)


class _Prefetcher:
    """Runs a host-chunk iterator in a thread, ``jax.device_put``-ing each chunk ahead of use.

    Items are tuples whose last element is the host chunk; they come out with
    the device chunk in its place.
    """

    _DONE = object()

    def __init__(self, chunks: Iterator[tuple[Any, ...]], depth: int, put: Callable[[Any], Any] | None = None) -> None:
        import jax

        put = put or jax.device_put
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._finished = False

        def work() -> None:
            try:
                for *meta, host in chunks:
                    item = (*meta, put(host))
                    while not self._stopped.is_set():
                        try:
                            self._queue.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stopped.is_set():
                        return
                self._queue.put(self._DONE)
            except BaseException as err:  # handed to the training thread
                self._queue.put(err)

        self._thread = threading.Thread(target=work, name="fp16cont-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while not self._finished:
            item = self._queue.get()
            if item is self._DONE:
                self._finished = True  # read again, it ends at once instead of waiting for items that never come
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stopped.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass


def _gather(a: np.ndarray, index: np.ndarray, rows: int, pool: concurrent.futures.ThreadPoolExecutor) -> np.ndarray:
    """``a[index]`` into a buffer of ``rows`` rows (zero padding after), copied by several threads."""
    out = np.zeros((rows, *a.shape[1:]), a.dtype) if rows > len(index) else np.empty((rows, *a.shape[1:]), a.dtype)
    parts = np.array_split(np.arange(len(index)), _GATHER_THREADS)
    list(pool.map(lambda p: np.take(a, index[p], axis=0, out=out[p[0] : p[-1] + 1], mode="clip") if len(p) else None, parts))
    return out


def _leading(chunk: Any) -> int:
    import jax

    return int(jax.tree_util.tree_leaves(chunk)[0].shape[0])


def _batches(source: Any) -> Iterator[Any]:
    if is_tf_dataset(source):
        return iter(source.as_numpy_iterator())
    if isinstance(source, keras.utils.PyDataset):
        return (source[i] for i in range(len(source)))
    raise DataError(f"Cannot stream a {type(source).__name__}. Fix: pass arrays, a tf.data.Dataset or a keras.utils.PyDataset.")


def _dataset_steps(source: Any, limit: int | None) -> int | None:
    steps: int | None = None
    if is_tf_dataset(source):
        cardinality = int(source.cardinality())
        steps = cardinality if cardinality >= 0 else None
    elif isinstance(source, keras.utils.PyDataset):
        steps = len(source)
    if limit is not None:
        return int(limit) if steps is None else min(steps, int(limit))
    return steps


def _shapes(batch: Any) -> Any:
    import jax

    return [(a.shape, str(a.dtype)) for a in jax.tree_util.tree_leaves(batch)]


def _stack(batches: list[Any]) -> Any:
    import jax

    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *batches)


def _class_weights(y: Any, class_weight: dict[int, float]) -> np.ndarray:
    """Per-sample weights from a ``{class: weight}`` dict, as ``fit`` derives them."""
    y = np.asarray(y)
    labels = np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y), -1)[:, 0]
    labels = labels.astype(np.int64)
    table = np.ones(max(int(labels.max(initial=0)), max(class_weight)) + 1, dtype=np.float32)
    for cls, weight in class_weight.items():
        table[int(cls)] = weight
    return table[labels]


# -- small helpers -------------------------------------------------------------------
def _jax() -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp

    return jax, jnp


def _platform() -> str:
    import jax

    return str(jax.devices()[0].platform)


def _tree_map(fn: Callable[[Any], Any], data: Any) -> Any:
    import jax

    return jax.tree_util.tree_map(fn, data)


def _rows(data: Any) -> int:
    import jax

    return int(jax.tree_util.tree_leaves(data)[0].shape[0])


def _nbytes(data: Any) -> int:
    import jax

    return sum(int(np.prod(a.shape)) * np.dtype(str(a.dtype) if str(a.dtype) != "bfloat16" else "uint16").itemsize
               for a in jax.tree_util.tree_leaves(data) if hasattr(a, "shape"))


def _fits_device(nbytes: int, fraction: float) -> bool:
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # some platforms (CPU) report nothing
        stats = {}
    limit = stats.get("bytes_limit")
    return not limit or nbytes <= fraction * limit
