"""Shared fixtures: small real Keras models and the embedded digits data."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite compiles hundreds of small XLA programs that then run for milliseconds; LLVM's optimisation
# passes are most of their compile time on a CPU (JAX phase: 104 s -> 68 s for test_device_loop.py).
# Both sides of every comparison here compile under the same flags; set XLA_FLAGS to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import keras
import numpy as np
import pytest

from fp16cont._keras_compat import flatten_layers
from fp16cont.bench.datasets import load_digits


@pytest.fixture(scope="session")
def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return load_digits()


@keras.saving.register_keras_serializable(package="fp16cont_tests")
class ScaledDense(keras.layers.Layer):
    """A custom registered layer with its own weights and config."""

    def __init__(self, units: int, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = units, scale

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="w")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.scale + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}


@keras.saving.register_keras_serializable(package="fp16cont_tests")
class SubclassedNet(keras.Model):
    """A subclassed model with get_config: rebuildable."""

    def __init__(self, hidden: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.body = keras.layers.Dense(hidden, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(10, activation="softmax")

    def call(self, x, training=False):
        return self.head(self.norm(self.body(x), training=training))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


class NoConfigNet(keras.Model):
    """A subclassed model whose __init__ takes a layer and that has no get_config."""

    def __init__(self, layer):
        super().__init__()
        self.inner = layer

    def call(self, x):
        return self.inner(x)


def unrebuildable_model(features: int = 4) -> keras.Model:
    """A built subclassed model that cannot be rebuilt from its config."""
    model = NoConfigNet(keras.layers.Dense(2))
    model(np.zeros((1, features), "float32"))
    return model


def dense_with_weight(value: float) -> keras.Model:
    """A tiny model whose first kernel value is ``value`` (NaN, beyond float16, ...)."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    weights = model.get_weights()
    weights[0][0, 0] = value
    model.set_weights(weights)
    return model


def sequential_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="seq",
    )


def functional_model() -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Flatten()(h)
    a = keras.layers.Dense(16, activation="relu")(h)
    b = keras.layers.LayerNormalization()(keras.layers.Dense(16)(h))
    h = keras.layers.Concatenate()([a, b])
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="func")


def nested_model() -> keras.Model:
    inner = keras.Sequential([keras.Input((64,)), keras.layers.Dense(24, activation="relu")], name="inner")
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, activation="softmax", name="top")(inner(inputs))
    return keras.Model(inputs, outputs, name="outer")


def custom_layer_model() -> keras.Model:
    return keras.Sequential(
        [keras.Input((64,)), ScaledDense(12, scale=0.5), keras.layers.Dense(10, activation="softmax")], name="custom"
    )


def subclassed_model() -> keras.Model:
    model = SubclassedNet(16, name="sub")
    model(np.zeros((1, 64), "float32"))
    return model


MODEL_BUILDERS = {
    "sequential": sequential_model,
    "functional": functional_model,
    "nested": nested_model,
    "custom_layer": custom_layer_model,
    "subclassed": subclassed_model,
}


def to_input(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Reshape flat digits to what ``model`` takes."""
    return x.reshape(-1, 8, 8, 1) if model.name == "func" else x


@pytest.fixture(scope="session", params=sorted(MODEL_BUILDERS))
def trained_model(request, digits) -> keras.Model:
    """Each model kind, compiled and trained one epoch on the digits (shared: fp16cont only reads it)."""
    keras.utils.set_random_seed(0)
    model = MODEL_BUILDERS[request.param]()
    (x, y), _ = digits
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(to_input(model, x), y, epochs=1, batch_size=128, verbose=0)
    return model


def _plain(value):
    """What an attribute holds, comparable after a call: values of plain data, identities of objects."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, keras.Variable):
        return np.array(keras.ops.convert_to_numpy(value.value)).tobytes()
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, (list, tuple)):
        return tuple(id(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, id(item)) for key, item in value.items())
    return type(value).__name__


# Keras' own record that a layer was called once, which any inference call sets (build_fp16_model's
# probe batch runs the source); it changes nothing the model computes.
_CALL_BOOKKEEPING = frozenset({"_called"})


def object_state(obj) -> dict:
    """Every attribute of ``obj`` (``vars``: identity and value) and the values of its variables."""
    state = {name: (id(value), _plain(value)) for name, value in vars(obj).items() if name not in _CALL_BOOKKEEPING}
    state["variables()"] = [_plain(v) for v in getattr(obj, "variables", [])]
    return state


def snapshot(model: keras.Model) -> dict:
    """Everything a fp16cont call must leave unchanged on a source model, its optimizer and keras.config."""
    optimizer = getattr(model, "optimizer", None)
    return {
        "weights": [np.array(keras.ops.convert_to_numpy(v.value)).tobytes() for v in model.weights],
        "dtypes": [str(v.dtype) for v in model.weights],
        "policies": [layer.dtype_policy.name for layer in [model, *flatten_layers(model)]],
        "attributes": object_state(model),
        "compiled": getattr(model, "compiled", False),
        "optimizer": type(optimizer).__name__,
        "optimizer_attributes": object_state(optimizer) if optimizer is not None else None,
        "compile_config": repr(model.get_compile_config()) if getattr(model, "compiled", False) else None,
        "floatx": keras.config.floatx(),
        "policy": keras.config.dtype_policy().name,
        "epsilon": keras.config.epsilon(),
        "image_data_format": keras.config.image_data_format(),
    }


def start_beside(request, test_name: str, args: list[str], **popen):
    """Start the child process of ``test_name`` when its module starts, to run beside the module's other tests.

    A child that only starts Python and a backend (seconds of one busy core) then costs the suite next to no
    wall time on a machine of two or more cores. Used by a module-scoped fixture; yields ``None`` when
    ``test_name`` is not among this session's tests, else the ``subprocess.Popen`` (text mode, stdout and
    stderr piped), killed at the end of the module if the test did not wait for it.
    """
    selected = any(item.originalname == test_name and item.path == request.path for item in request.session.items)
    if not selected:
        yield None
        return
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


# Modules whose child processes (minutes of one core each, mostly) start with the session, to run beside the
# tests in this process: module name -> how its ``start_children`` is called.
_EARLY_MODULES = {
    "tests.training.test_engine_distributed": lambda module, factory, selected: module.start_children(factory),
    "tests.test_distributed": lambda module, factory, selected: module.start_children(factory, selected),
    "tests.training.test_checkpoint": lambda module, factory, selected: (
        module.start_children(factory) if "test_sigkill_mid_epoch_then_resume_gives_identical_weights" in selected
        else None),
    "tests.optim.test_torch_update": lambda module, factory, selected: module.start_children(factory),
}


# How many pytest-xdist workers ``-n auto`` (pyproject.toml's addopts) starts for the whole suite: the README's
# command, without paths, runs on two cores; with paths (one module, CI's JAX phase) the tests run in this
# process. ``-n N`` or PYTEST_XDIST_AUTO_NUM_WORKERS=N chooses another count, ``-n 0`` none.
SUITE_WORKERS = 2


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist reads it
    sources = getattr(pytest.Config, "ArgsSource", None)  # pytest >= 7.3
    whole_suite = sources is not None and getattr(config, "args_source", None) == sources.TESTPATHS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(SUITE_WORKERS, cores) if whole_suite and cores > 1 else 0


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the modules with child processes first, each module whole on one worker (``--dist
    loadfile``, kept in this order): their children start with the run and work beside the other worker's tests."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    first = list(_EARLY_MODULES)
    root = Path(__file__).resolve().parents[1]

    def rank(item):
        try:
            name = ".".join(item.path.resolve().relative_to(root).with_suffix("").parts)
        except ValueError:
            return len(first)
        return first.index(name) if name in first else len(first)

    items.sort(key=rank)  # stable: the order within each module, and of the other modules, is kept


@pytest.fixture(scope="session", autouse=True)
def early_children(request, tmp_path_factory):
    """The children of the modules in ``_EARLY_MODULES`` that this session runs, started at its first test.

    Returns {module name: what its ``start_children`` returned}; a module not here starts its own. Under
    pytest-xdist none start here (each worker collects every test, so each would start them all): the worker
    that runs such a module starts its children when the module starts.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield {}
        return
    root = Path(__file__).resolve().parents[1]
    selected: dict[str, set[str]] = {}
    for item in request.session.items:
        try:
            name = ".".join(item.path.resolve().relative_to(root).with_suffix("").parts)
        except ValueError:  # a test outside this checkout
            continue
        selected.setdefault(name, set()).add(item.originalname)
    started = {}
    for name, start in _EARLY_MODULES.items():
        if name in selected:
            started[name] = start(importlib.import_module(name), tmp_path_factory, selected[name])
    yield started
    for value in started.values():  # children whose tests did not wait for them (a failure, -x)
        if value is None:
            continue
        if isinstance(value, tuple):  # (folder, processes)
            processes = value[1]
        else:  # {name: child with .process, or (process, output path)}
            processes = [c.process if hasattr(c, "process") else c[0] for c in value.values()]
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
