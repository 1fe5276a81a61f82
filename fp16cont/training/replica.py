"""BatchNorm statistics per replica under a JAX ``keras.distribution`` (``Engine(batch_statistics="replica")``).

Keras documents ``BatchNormalization(synchronized=False)`` (its default, and
the only value the JAX backend accepts) as "each replica uses its own local
batch statistics", which is what ``tf.distribute`` does. Under JAX's
``DataParallel`` a step is one program that XLA partitions over the devices,
so the statistics are those of the global batch instead: each BatchNorm layer
needs two cross-device reductions in the forward pass (the mean, then the
variance from it) and two in the backward pass, and the next layer waits for
each of them (about 210 a step for ResNet-50). Their count, not their bytes,
costs the time.

The per-replica step runs each step's forward and backward pass on every
device's own rows (``jax.shard_map`` over the mesh's batch axis). The only
cross-device reductions left are:

- the gradients, averaged over the replicas: one set of gradients for all,
  so the loss-scale and NaN decisions are one value for all replicas;
- the moving statistics and any other non-trainable variable the step
  changed, averaged (as ``tf.distribute`` reads its per-replica statistics);
- the loss trackers updated during the loss computation, summed.

The optimizer update and the compiled metrics then run on the global batch,
as in Keras' own JAX ``train_step``. The loss is each device's loss averaged
over the devices, which is what ``tf.distribute`` computes: the global batch's
loss for Keras' mean reductions, but 1/n of it for a loss that sums over its
rows (a plain function returning a sum, an ``add_loss`` of a batch sum), and a
masked loss becomes the mean of each device's masked mean. Apart from that,
the result differs from the global-batch step through BatchNorm (each device's
rows normalised with their own mean and variance; the moving variance is the
mean of the replicas' variances) and through random layers: every replica
draws its own dropout masks from its own stream (replica 0's is the one the
global step would use, and the seed state advances as it does there).

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("sgd", "mse")
    >>> replica_blocker(model, shardings=None) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from fp16cont import _keras_compat as compat

__all__ = ["BATCH_STATISTICS", "replica_blocker", "replica_train_step"]

BATCH_STATISTICS: tuple[str, ...] = ("global", "replica")
_MEAN_REDUCTIONS = frozenset({"sum_over_batch_size", "mean"})


def replica_blocker(model: keras.Model, shardings: Any) -> str | None:
    """Why the per-replica step cannot train ``model`` with this state layout, or ``None``.

    Args:
        model: A compiled Keras model with BatchNormalization (JAX backend).
        shardings: The state's ``(trainable, non_trainable, optimizer,
            metrics)`` shardings on the mesh, or ``None``.

    Returns:
        A sentence saying what stands in the way, or ``None`` when the
        per-replica step computes what Keras' ``train_step`` computes apart
        from BatchNorm's statistics.

    Example:
        >>> replica_blocker(model, shardings) is None  # doctest: +SKIP
        True
    """
    if type(model).train_step is not keras.Model.train_step:
        return f"{type(model).__name__} overrides train_step, which the per-replica step would bypass"
    reductions = sorted({r for r in _loss_reductions(model.loss) if r not in _MEAN_REDUCTIONS}, key=str)
    if reductions:
        return (f"the loss reduction {reductions[0]!r} is not a mean over the batch, so the replicas' gradients do not "
                "average to the global batch's")
    if shardings is not None and not all(s.is_fully_replicated for group in shardings for s in group):
        return "some weights are split over the devices (ModelParallel); the per-replica step needs them replicated"
    return None


def _loss_reductions(loss: Any) -> list[Any]:
    """The reduction of every loss in a ``compile(loss=...)`` argument (names and functions: the default)."""
    return [getattr(item, "reduction", "sum_over_batch_size") for item in keras.tree.flatten(loss) if item is not None]


def _seed_states(model: keras.Model) -> set[int]:
    """The ``id`` of every ``keras.random.SeedGenerator`` state variable the model's layers hold."""
    layers = [model, *compat.flatten_layers(model)]
    return {id(value.state) for layer in layers for value in vars(layer).values() if isinstance(value, keras.random.SeedGenerator)}


def replica_train_step(model: keras.Model, mesh: Any, axis: str) -> Callable[[Any, Any], tuple[Any, Any]]:
    """A stateless ``train_step(state, data)`` whose BatchNorm statistics are each replica's own.

    Args:
        model: A model for which :func:`replica_blocker` returned ``None``.
        mesh: The JAX mesh of the active distribution.
        axis: Its batch axis.

    Returns:
        A function with the signature and state layout of Keras' JAX
        ``model.train_step``; a batch whose rows do not divide over the axis
        (a last partial batch, replicated whole) goes to ``model.train_step``.

    Example:
        >>> step = replica_train_step(model, mesh, "batch")  # doctest: +SKIP
        >>> logs, state = step(state, (x, y))  # doctest: +SKIP
    """
    import jax
    from jax.sharding import PartitionSpec

    shards = int(mesh.shape[axis])
    replicated, split = PartitionSpec(), PartitionSpec(axis)
    seeds = _seed_states(model)
    is_seed = [id(v) in seeds for v in model.non_trainable_variables]

    def local(trainable: Any, non_trainable: Any, optimizer_vars: Any, metrics_vars: Any, x: Any, y: Any, sw: Any) -> Any:
        replica = jax.lax.axis_index(axis)
        # each replica draws from its own random stream; replica 0's is the global step's
        own = [v + replica.astype(v.dtype) if seed else v for v, seed in zip(non_trainable, is_seed)]
        grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
        (_, aux), grads = grad_fn(trainable, own, metrics_vars, x, y, sw, training=True,
                                  optimizer_variables=optimizer_vars)
        unscaled, y_pred, new_non_trainable, new_metrics = aux
        grads = [jax.lax.psum(g / shards, axis) for g in grads]  # divided first: the sum cannot overflow where the mean would not
        return (grads, jax.lax.pmean(unscaled, axis), y_pred,
                [_averaged(old, new, axis, shards, replica) for old, new in zip(non_trainable, new_non_trainable)],
                [_summed(old, new, axis) for old, new in zip(metrics_vars, new_metrics)])

    per_replica = _shard_map(jax)(
        local, mesh=mesh, in_specs=(replicated, replicated, replicated, replicated, split, split, split),
        out_specs=(replicated, replicated, split, replicated, replicated),
    )

    def step(state: Any, data: Any) -> tuple[Any, Any]:
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        rows = next(int(a.shape[0]) for a in jax.tree_util.tree_leaves(x))
        if rows % shards:
            return model.train_step(state, data)
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        grads, unscaled, y_pred, non_trainable, metrics_vars = per_replica(
            trainable, non_trainable, optimizer_vars, metrics_vars, x, y, sw)
        trainable, optimizer_vars = model.optimizer.stateless_apply(optimizer_vars, grads, trainable)
        logs, metrics_vars = compat.update_metrics_after_step(model, metrics_vars, unscaled, x, y, y_pred, sw)
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    return step


def _shard_map(jax: Any) -> Callable[..., Any]:
    """``jax.shard_map`` without replication checks (the outputs are reduced by hand)."""
    if hasattr(jax, "shard_map"):
        return lambda f, **kw: jax.shard_map(f, check_vma=False, **kw)
    from jax.experimental.shard_map import shard_map  # JAX before 0.6

    return lambda f, **kw: shard_map(f, check_rep=False, **kw)


def _averaged(old: Any, new: Any, axis: str, shards: int, replica: Any) -> Any:
    """The replicas' mean of a changed float variable (float32 arithmetic; unchanged ones stay bit-equal).

    Other variables (seed states, counters) take replica 0's value, so that
    every device holds the same one.
    """
    import jax
    import jax.numpy as jnp

    if not jnp.issubdtype(new.dtype, jnp.floating):
        as_number = new.astype(jnp.int32) if new.dtype == jnp.bool_ else new
        first = jax.lax.psum(jnp.where(replica == 0, as_number, jnp.zeros_like(as_number)), axis)
        return first.astype(new.dtype)
    delta = jax.lax.psum((new.astype(jnp.float32) - old.astype(jnp.float32)) / shards, axis)
    return (old.astype(jnp.float32) + delta).astype(new.dtype)


def _summed(old: Any, new: Any, axis: str) -> Any:
    """The replicas' updates of an accumulating metric variable (a loss tracker's total and count), added."""
    import jax
    import jax.numpy as jnp

    if not (jnp.issubdtype(new.dtype, jnp.floating) or jnp.issubdtype(new.dtype, jnp.integer)):
        return new
    return old + jax.lax.psum(new - old, axis)
