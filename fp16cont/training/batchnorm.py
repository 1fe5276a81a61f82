"""Re-estimate BatchNormalization moving statistics with the final weights ("precise BatchNorm").

A BatchNormalization layer normalises with the statistics of each batch while
training, and with its moving mean and variance at inference. Those are an
exponential moving average (momentum 0.99 by default) of batch statistics
computed with *earlier* weights: when the weights move fast (a high learning
rate, few steps since a change) the averages lag behind, and inference
normalises with statistics of a model that no longer exists. Precise
BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; Detectron2's
``PreciseBN`` hook) replaces them, after training, by the population
statistics of the final model: training-mode forward passes over training
batches, without any weight update, with the batch means and variances of
every layer aggregated with equal weight per sample.

Example:
    >>> import numpy as np, keras, fp16cont
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (256, 4)).astype("float32")
    >>> result = fp16cont.recalibrate_batchnorm(model, x, batch_size=64)
    >>> result.batches, bool(np.allclose(model.layers[0].moving_mean.numpy(), x.mean(0), atol=1e-5))
    (4, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from fp16cont._keras_compat import flatten_layers
from fp16cont.errors import (
    DataError,
    InvalidArgumentError,
    ModelNotBuiltError,
    NonFiniteOutputError,
    check_int,
)
from fp16cont.reporting.results import BatchNormRecalibration
from fp16cont.training.data import check_data_type, check_fits_model, is_array_like, sample_count

__all__ = ["recalibrate_batchnorm", "BatchNormRecalibration", "batchnorm_layers"]

_DEFAULT_BATCH_SIZE = 32  # Keras' default for arrays
_STATS = ("moving_mean", "moving_variance", "moving_stddev")  # moving_stddev: renorm layers only


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of ``model``, nested models and layers included, each once.

    Args:
        model: A Keras model (or layer).

    Returns:
        The layers, in the order Keras walks them (parents before children).

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
        >>> [type(l).__name__ for l in batchnorm_layers(m)]
        ['BatchNormalization']
    """
    seen: set[int] = set()
    found = []
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def recalibrate_batchnorm(
    model: keras.Model,
    x: Any,
    *,
    batch_size: int | None = None,
    steps: int | None = None,
) -> BatchNormRecalibration:
    """Set every BatchNormalization layer's moving mean/variance to its population statistics.

    Runs ``model`` in training mode (``training=True``) over batches of ``x``
    with the current weights, without updating any weight, and collects each
    BatchNormalization layer's batch mean and variance. The new moving mean
    is the mean of the layer's input over all samples seen; the new moving
    variance is the variance over all samples: the per-sample-weighted mean of
    the batch variances plus the variance of the batch means, combined in
    float64 (Detectron2's hook averages the batch variances only, which
    misses the second term). Layers upstream of a
    BatchNormalization layer normalise with batch statistics during these
    passes, exactly as in training.

    Only the moving statistics of trainable BatchNormalization layers change
    (plus ``moving_stddev`` of ``renorm=True`` layers); every other variable of
    the model, the optimizer and the data are left untouched, and the passes
    run on copies of the values (``stateless_call``), so dropout's random
    state does not advance either. Frozen layers (``trainable=False``) are
    skipped: training never updates their statistics. A layer called several
    times in one forward pass gets the statistics of its last call.

    Works on every Keras backend (compiled with ``jax.jit`` on JAX and
    ``tf.function`` on TensorFlow), for Sequential, functional and subclassed
    models with BatchNormalization layers at any depth.

    Args:
        model: A built Keras model, e.g. the one ``continue_training`` just
            trained. Modified in place (its BatchNormalization statistics only).
        x: Inputs only: a numpy array (or a list/dict of them, one per model
            input), or a ``tf.data.Dataset``, ``keras.utils.PyDataset`` or
            iterable of batches (elements ``x`` or ``(x, y[, sample_weight])``;
            the targets are ignored). Use training data, shuffled or in a
            representative order when ``steps`` takes only part of it.
        batch_size: Samples per batch for array inputs (default 32). Use the
            training batch size: layers upstream of a BatchNormalization layer
            see batch statistics of this size. Not allowed for datasets, which
            keep their own batches.
        steps: Number of batches to use (default: one pass over ``x``). Fewer
            batches are used if ``x`` runs out first; the result says how many
            were. Required for endless generators.

    Returns:
        A :class:`BatchNormRecalibration`: the layers updated, the frozen
        layers skipped, the batches and samples used, and how far each
        layer's moving mean moved. A model without trainable
        BatchNormalization layers is left as it is (``layers == ()``, no
        forward pass).

    Raises:
        InvalidArgumentError: If ``model`` is not a Keras model, ``batch_size``
            or ``steps`` is not a positive integer, ``batch_size`` is given
            with a dataset, or an endless ``tf.data.Dataset`` comes without
            ``steps``.
        ModelNotBuiltError: If ``model`` has no weights yet.
        DataError: If ``x`` is not data, is empty, its arrays differ in
            length, has the wrong shape or dtype for the model, holds NaN/Inf,
            or the model cannot run on it.
        NonFiniteOutputError: If a layer's statistics come out NaN or Inf
            (the model is then left unchanged).

    Example:
        >>> result = fp16cont.continue_training(model16, x, y, epochs=1, batch_size=128)  # doctest: +SKIP
        >>> fp16cont.recalibrate_batchnorm(model16, x, batch_size=128, steps=100).summary()  # doctest: +SKIP
        'recalibrated 3 BatchNormalization layer(s) over 100 batches (12800 samples); largest mean shift 0.41 std'
    """
    _check_model(model)
    if steps is not None:
        steps = check_int("steps", steps, example=100, hint=", or steps=None for one pass over x")
    batches = _batches(model, x, batch_size, steps)
    layers = batchnorm_layers(model)
    positions = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    active = [layer for layer in layers if layer.trainable and layer.built and id(layer.moving_mean) in positions]
    skipped = tuple(_path(layer) for layer in layers if layer not in active)
    if not active:
        return BatchNormRecalibration(layers=(), skipped=skipped, batches=0, samples=0)
    gather = [positions[id(v)] for layer in active for v in (layer.moving_mean, layer.moving_variance)]
    zeroed = {positions[id(getattr(layer, name))] for layer in active for name in _STATS if hasattr(layer, name)}
    totals = [_Moments() for _ in active]
    used = samples = 0
    momenta = [layer.momentum for layer in active]
    try:
        for layer in active:
            layer.momentum = 0.0  # the update then stores the batch statistics themselves
        forward = _compiled(_forward(model, gather))
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [
            keras.ops.zeros_like(v.value) if i in zeroed else v.value  # zeros: stale or NaN values cannot leak in
            for i, v in enumerate(model.non_trainable_variables)
        ]
        for batch in batches:
            stats = _run(forward, trainable, non_trainable, batch, first=used == 0)
            n = _batch_rows(batch)
            for j, total in enumerate(totals):
                total.add(n, _host(stats[2 * j]), _host(stats[2 * j + 1]))
            used += 1
            samples += n
    finally:
        for layer, momentum in zip(active, momenta):
            layer.momentum = momentum
    if used == 0:
        raise DataError("Argument `x` yielded no batches. Fix: pass non-empty training data.")
    shifts = _assign(active, totals)
    return BatchNormRecalibration(
        layers=tuple(_path(layer) for layer in active), skipped=skipped, batches=used, samples=samples, shifts=shifts
    )


class _Moments:
    """Running count, mean and sum of squared deviations per channel (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, n: int, mean: np.ndarray, variance: np.ndarray) -> None:
        """Merge a batch of ``n`` samples with per-channel ``mean`` and (biased) ``variance``."""
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, n * variance
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + n * variance + delta**2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(population mean, population variance)."""
        assert self.mean is not None and self.m2 is not None
        return self.mean, self.m2 / self.count


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise InvalidArgumentError(
            f"Argument `model` should be a keras.Model. Received: {type(model).__name__}. Fix: pass the model "
            "whose BatchNormalization statistics should be re-estimated, e.g. the one continue_training trained."
        )
    if not model.built or not model.weights:
        raise ModelNotBuiltError(
            f"Model {model.name!r} has no weights yet, so it has no statistics to re-estimate. Fix: build it "
            "first, e.g. model.build(input_shape) or call it once on a batch, or train it."
        )


def _path(layer: keras.layers.Layer) -> str:
    return str(getattr(layer, "path", None) or layer.name)


def _batches(model: keras.Model, x: Any, batch_size: Any, steps: int | None) -> Iterator[Any]:
    """Check ``x`` and return an iterator over at most ``steps`` input batches."""
    if is_array_like(x):
        size = _DEFAULT_BATCH_SIZE if batch_size is None else check_int("batch_size", batch_size, example=128)
        _check_arrays(model, x)
        n = sample_count(x) or 0
        count = math.ceil(n / size) if steps is None else min(steps, math.ceil(n / size))
        return (keras.tree.map_structure(lambda a, i=i: a[i * size : (i + 1) * size], x) for i in range(count))
    check_data_type(x, "x", kind="model inputs")
    if batch_size is not None:
        raise InvalidArgumentError(
            f"Argument `batch_size` applies to array inputs only; `x` is a {type(x).__name__}, which keeps its own "
            f"batches. Received: batch_size={batch_size!r}. Fix: leave batch_size=None (batch the dataset itself)."
        )
    if steps is None and hasattr(x, "cardinality") and int(x.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise InvalidArgumentError(
            "Argument `x` is an endless tf.data.Dataset (it repeats), so one pass never ends. Received: steps=None. "
            "Fix: pass steps=, e.g. steps=100."
        )
    if isinstance(x, keras.utils.PyDataset):
        source: Iterator[Any] = (x[i] for i in range(len(x)))
    else:
        source = iter(x)
    return _limited((keras.utils.unpack_x_y_sample_weight(b)[0] for b in source), steps)


def _limited(source: Iterator[Any], steps: int | None) -> Iterator[Any]:
    for i, batch in enumerate(source):
        if steps is not None and i >= steps:
            return
        yield keras.tree.map_structure(keras.ops.convert_to_numpy, batch)


def _check_arrays(model: keras.Model, x: Any) -> None:
    lengths = {len(a) for a in keras.tree.flatten(x)}
    if len(lengths) > 1:
        raise DataError(
            f"The arrays of `x` differ in length ({sorted(lengths)} samples). Fix: pass one sample per row in "
            "every input array."
        )
    if lengths == {0}:
        raise DataError("Argument `x` holds no samples. Fix: pass training data with at least one sample.")
    check_fits_model(model, x, None, None, None)


def _forward(model: keras.Model, gather: list[int]) -> Callable[[Any, Any, Any], list[Any]]:
    def forward(trainable: Any, non_trainable: Any, batch: Any) -> list[Any]:
        _, updated = model.stateless_call(trainable, non_trainable, batch, training=True)
        return [updated[i] for i in gather]

    return forward


def _compiled(forward: Callable[..., Any]) -> Callable[..., Any]:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(forward)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(forward, reduce_retracing=True)
    if backend == "torch":
        import torch

        def no_grad(*args: Any) -> Any:
            with torch.no_grad():
                return forward(*args)

        return no_grad
    return forward


def _run(forward: Callable[..., Any], trainable: Any, non_trainable: Any, batch: Any, *, first: bool) -> Any:
    if not first:
        return forward(trainable, non_trainable, batch)
    try:
        return forward(trainable, non_trainable, batch)
    except Exception as err:  # the first batch: a model that cannot run on x is a data error
        raise DataError(
            f"The model could not run on a batch of `x` ({type(err).__name__}: {str(err)[:300]}). Fix: pass the "
            "model's inputs only (no targets), of the shapes and dtypes the model takes."
        ) from err


def _batch_rows(batch: Any) -> int:
    return int(keras.tree.flatten(batch)[0].shape[0])


def _host(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _assign(layers: list[keras.layers.BatchNormalization], totals: list[_Moments]) -> tuple[float, ...]:
    """Check every result, then assign them all; return each layer's largest mean shift in std units."""
    results = [total.result() for total in totals]
    for layer, (mean, variance) in zip(layers, results):
        if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
            raise NonFiniteOutputError(
                f"BatchNormalization layer {_path(layer)!r} got NaN/Inf batch statistics, so its moving statistics "
                "were left as they were (and every other layer's too). Fix: check the model's weights and the data "
                "for NaN/Inf (e.g. after a diverged run, restore a good checkpoint first)."
            )
    shifts = []
    for layer, (mean, variance) in zip(layers, results):
        old = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean.value), np.float64).reshape(mean.shape)
        shifts.append(float(np.max(np.abs(mean - old) / np.sqrt(variance + layer.epsilon), initial=0.0)))
        _set(layer.moving_mean, mean)
        _set(layer.moving_variance, variance)
        if getattr(layer, "renorm", False) and hasattr(layer, "moving_stddev"):
            _set(layer.moving_stddev, np.sqrt(variance + layer.epsilon))
    return tuple(shifts)


def _set(variable: Any, value: np.ndarray) -> None:
    variable.assign(keras.ops.cast(np.asarray(value, np.float32).reshape(tuple(variable.shape)), variable.dtype))
