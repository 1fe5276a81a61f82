"""Child process of tests/training/test_engine_distributed.py: the engine under keras.distribution on CPU.

The host devices must be set before JAX starts, hence a process of its own.

    python engine_distributed_child.py devices OUT.json
        two host devices: the resident and streamed engines without a distribution (one
        device) and under DataParallel (two), an overflow that only one replica sees, the
        one-device reference of the multi-process test, and ModelParallel of a small GPT-2.
    python engine_distributed_child.py data_parallel OUT.json
    python engine_distributed_child.py model_parallel OUT.json
        the two halves of ``devices``, each in a process of its own (they can run side by side).
    python engine_distributed_child.py worker OUT.json PROCESS_ID PORT CHECKPOINT_DIR
        one of two processes joined by jax.distributed (one CPU device each, gloo
        collectives), each feeding its own shard of the data under DataParallel: one
        epoch with checkpoints (written by process 0), then a new model resumes for the second.
"""

import json
import os
import sys
import time

mode, out = sys.argv[1], sys.argv[2]
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if mode in ("devices", "data_parallel", "model_parallel"):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
else:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one CPU device per process

import jax  # noqa: E402

if mode == "worker":
    process_id, port = int(sys.argv[3]), int(sys.argv[4])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=60)

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from fp16cont.bench.demo import load_digits  # noqa: E402
from fp16cont.training import engine as engine_lib  # noqa: E402
from fp16cont.training.engine import Engine  # noqa: E402

warnings.simplefilter("ignore")
PER_PROCESS_BATCH = 32
ROWS = 1024  # whole batches of 64 = 2 x 32


def mlp(precision):
    keras.utils.set_random_seed(0)
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                               keras.layers.Dense(10, activation="softmax")])
    return fp16cont.build_fp16_model(source, precision=precision, verify=False)


def weights(model):
    return [np.asarray(w, np.float32).ravel().tolist() for w in model.get_weights()]


def train(model, x, y, engine, batch_size=64, epochs=2, **kwargs):
    kwargs.setdefault("optimizer", keras.optimizers.SGD(0.1, momentum=0.9))
    return fp16cont.continue_training(
        model, x, y, epochs=epochs, batch_size=batch_size, loss="sparse_categorical_crossentropy", verbose=0,
        engine=Engine(engine, steps_per_execution=4), **kwargs,
    )


def replicas_agree(model):
    """Every device's copy of every replicated variable holds the same bits."""
    for v in [*model.weights, *model.optimizer.variables]:
        shards = v.value.addressable_shards
        if v.value.sharding.is_fully_replicated and len(shards) > 1:
            first = np.asarray(shards[0].data)
            if not all(np.array_equal(first, np.asarray(s.data), equal_nan=True) for s in shards[1:]):
                return False
    return True


def per_device(model, kind):
    """The loss scale and skipped-step counter as each device holds them."""
    from fp16cont.optim.loss_scale import find_loss_scale

    scaler = find_loss_scale(model.optimizer)
    variable = scaler.dynamic_scale if kind == "scale" else scaler.skipped_steps
    return [float(np.asarray(s.data)) for s in variable.value.addressable_shards]


def summary(model, result):
    return {
        "weights": weights(model), "engine": result.engine, "reason": result.engine_reason,
        "loss_scale": result.loss_scale, "skipped_steps": result.skipped_steps, "rollbacks": result.rollbacks,
        "loss": [float(v) for v in result.history.history["loss"]],
        "iterations": int(np.asarray(model.optimizer.iterations)),
    }


def data_parallel_runs(results):
    (x, y), _ = load_digits()
    x, y = x[:ROWS], y[:ROWS]
    # an input that overflows float16 in one row of batch 3, in the half that the second device computes;
    # 9 more rows make a last batch that does not split over two devices (computed whole on both)
    poisoned = np.concatenate([x, x[:9]])
    poisoned[3 * 64 + 40] = 3e4
    dp = keras.distribution.DataParallel()
    # no shuffle: the one-device run is also the reference of the two-process test (global batches of 2 x 32 rows)
    model = mlp("float16")
    results["one_float16"] = summary(model, train(model, x, y, "resident", shuffle=False))
    for engine in ("resident", "streamed"):
        # the streamed run's model is built before the distribution is set: the engine moves its variables
        model = mlp("float16") if engine == "streamed" else None
        with dp.scope():
            model = model or mlp("float16")
            result = train(model, x, y, engine, shuffle=False)
            results[f"dp_float16_{engine}"] = {
                **summary(model, result), "replicas_agree": replicas_agree(model),
                "devices": sorted({str(s.device) for s in model.weights[0].value.addressable_shards})}
    with dp.scope():
        model = mlp("float16")
        result = train(model, poisoned, np.concatenate([y, y[:9]]), "resident", shuffle=False, check_finite=False)
        results["dp_overflow"] = {**summary(model, result), "replicas_agree": replicas_agree(model),
                                  "scale_per_device": per_device(model, "scale"),
                                  "skipped_per_device": per_device(model, "skipped"),
                                  "all_reduce": _all_reduces(model)}


def batchnorm_runs(results):
    """Per-replica BatchNorm statistics: one float32 step checked against the replicas' gradients averaged by hand,
    and float16 continue_training with every default under both settings."""
    (x, y), _ = load_digits()
    x, y = x[:256].reshape(-1, 8, 8, 1), y[:256]
    dp = keras.distribution.DataParallel()

    def cnn(precision=None):
        keras.utils.set_random_seed(0)
        source = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3), keras.layers.BatchNormalization(momentum=0.5),
                                   keras.layers.ReLU(), keras.layers.Conv2D(16, 3), keras.layers.BatchNormalization(momentum=0.5),
                                   keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.25, seed=1),
                                   keras.layers.Dense(10)])
        source.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return source if precision is None else fp16cont.build_fp16_model(source, precision=precision, verify=False)

    def one_step(statistics):  # float32, plain SGD, one batch of 64 (32 rows per device)
        model = cnn()
        engine = Engine("resident", steps_per_execution=1, batch_statistics=statistics)
        with dp.scope():
            engine_lib.fit_with_engine(model, x[:64], y[:64], choice=engine_lib.choose_engine(engine, x, {}), engine=engine,
                                       epochs=1, batch_size=64, validation_data=None, callbacks=[], verbose=0,
                                       fit_kwargs={"shuffle": False})
        return model

    def by_hand():  # each device's half with its own statistics and dropout stream, gradients and moving statistics averaged
        model = cnn()
        model.build((None, 8, 8, 1))
        model.optimizer.build(model.trainable_variables)
        values = lambda vs: [v.value for v in vs]  # noqa: E731
        seed = [v.dtype == "uint32" for v in model.non_trainable_variables]  # the Dropout's seed state: replica r adds r
        halves = [jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)(
            values(model.trainable_variables), [v.value + r if s else v.value for v, s in zip(model.non_trainable_variables, seed)],
            values(model.metrics_variables), x[32 * r:32 * r + 32], y[32 * r:32 * r + 32], None, training=True,
            optimizer_variables=values(model.optimizer.variables)) for r in (0, 1)]
        for v, a, b in zip(model.trainable_variables, halves[0][1], halves[1][1]):
            v.assign(v.value - 0.1 * (a + b) / 2)
        for v, s, a, b in zip(model.non_trainable_variables, seed, halves[0][0][1][2], halves[1][0][1][2]):
            v.assign(a if s else (a + b) / 2)  # the seed state advances as replica 0's (the global step's)
        return model

    fit = {"optimizer": keras.optimizers.SGD(0.1, momentum=0.9), "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    stepped = {"replica": one_step("replica"), "global": one_step("global"), "by_hand": by_hand()}
    results["bn_float32_step"] = {name: weights(model) for name, model in stepped.items()}
    results["bn_seed_states"] = {name: [np.asarray(v).tolist() for v in model.non_trainable_variables if v.dtype == "uint32"]
                                 for name, model in stepped.items()}
    for statistics in ("global", "replica"):
        with dp.scope():
            model = cnn("float16")
            result = fp16cont.continue_training(model, x, y, epochs=2, batch_size=64, verbose=0, shuffle=False, **fit,
                                                engine=Engine("resident", steps_per_execution=2, batch_statistics=statistics))
            results[f"bn_float16_{statistics}"] = {
                **summary(model, result), "replicas_agree": replicas_agree(model), "scale_per_device": per_device(model, "scale"),
                "all_reduce": _all_reduces(model, statistics, rows=256, batch=64, spe=2, features=(8, 8, 1)),
            }
    heavy = np.ones(len(y), np.float32)
    heavy[64 + 40] = 1e4  # batch 1, in the half the second device computes: its scaled gradients overflow float16 there only
    with dp.scope():
        model = cnn("float16")
        result = fp16cont.continue_training(model, x, y, epochs=1, batch_size=64, verbose=0, shuffle=False, **fit,
                                            sample_weight=heavy, engine=Engine("resident", steps_per_execution=2, batch_statistics="replica"))
        results["bn_float16_replica_overflow"] = {**summary(model, result), "replicas_agree": replicas_agree(model),
                                                  "scale_per_device": per_device(model, "scale"),
                                                  "skipped_per_device": per_device(model, "skipped")}
    model = cnn("float16")
    results["bn_float16_one_device"] = summary(model, fp16cont.continue_training(
        model, x, y, epochs=2, batch_size=64, verbose=0, shuffle=False, engine=Engine("resident", steps_per_execution=2), **fit))


def _all_reduces(model, statistics="global", rows=ROWS, batch=64, spe=4, features=(64,)):
    """How many all-reduce operations the engine's compiled step holds (the gradient sum over devices)."""
    # the engine's step for this model and layout (cached), lowered for a small chunk
    placement = engine_lib._placement()
    shardings = engine_lib._state_shardings(model, placement)
    state = tuple([v.value for v in group] for group in engine_lib._state_variables(model))
    engine = Engine("resident", steps_per_execution=spe, batch_statistics=statistics)
    run = engine_lib._compiled_steps(model, engine_lib._identity, engine, True, jax, jax.numpy, placement, shardings,
                                     engine_lib._train_step(model, engine, placement, shardings))
    # the shapes and layouts of the training call, so the compilation is the one already made
    arrays = placement.replicate((np.zeros((rows, *features), np.float32), np.zeros((rows,), np.int32), None))
    chunk = placement.put(np.zeros((rows // batch, batch), np.int32))
    logs = engine_lib._logs_structure(model, jax.numpy, placement)
    text = run.lower(state, arrays, chunk, np.int32(0), np.int32(spe), logs, True).compile().as_text()
    return text.count("all-reduce(") + text.count("all-reduce-start(")


def model_parallel_runs(results):
    import keras_hub

    def gpt2():
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.GPT2Backbone(vocabulary_size=512, num_layers=1, num_heads=4, hidden_dim=64,
                                                 intermediate_dim=256, max_sequence_length=16)
        source = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        return fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 512, size=(32, 17)).astype("int32")
    x, y = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((32, 16), "int32")}, tokens[:, 1:]

    def fit(model, slot_dtype):
        start = time.perf_counter()
        result = fp16cont.continue_training(
            model, x, y, epochs=1, batch_size=8, optimizer=keras.optimizers.Adam(1e-3), compensation="kahan",
            slot_dtype=slot_dtype, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), verbose=0,
            engine=Engine("resident", steps_per_execution=2),
        )
        return result, time.perf_counter() - start

    def device_bytes(model):
        table = {}
        for group, variables in (("weights", model.weights), ("optimizer", model.optimizer.variables)):
            for v in variables:
                for shard in v.value.addressable_shards:
                    table.setdefault(str(shard.device), {"weights": 0, "optimizer": 0})[group] += shard.data.nbytes
        return table

    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), keras.distribution.list_devices())
    layout = keras.distribution.LayoutMap(mesh)
    layout[r"token_embedding/embeddings"] = (None, "model")
    layout[r"position_embedding/embeddings"] = (None, "model")
    layout[r".*self_attention/(query|key|value)/kernel"] = (None, "model", None)
    layout[r".*self_attention/attention_output/kernel"] = ("model", None, None)
    layout[r".*feedforward_intermediate_dense/kernel"] = (None, "model")
    layout[r".*feedforward_output_dense/kernel"] = ("model", None)
    distribution = keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
    # float32 slots (made by fp16cont) and 16-bit Kahan buffers (made by Keras from the variable): both must follow the layout
    model = gpt2()
    one, one_seconds = fit(model, "float32")
    one_bytes, one_weights = device_bytes(model), weights(model)
    with distribution.scope():
        model = gpt2()
        two, two_seconds = fit(model, "float32")
        specs = {v.path: [str(v.dtype), list(v.shape), [str(a) for a in v.value.sharding.spec]]
                 for v in [*model.weights, *model.optimizer.variables]}
        results["model_parallel"] = {
            "one_device_bytes": one_bytes, "two_device_bytes": device_bytes(model), "specs": specs,
            "one_loss": one.history.history["loss"], "two_loss": two.history.history["loss"],
            "one_weights": one_weights, "two_weights": weights(model), "engine_reason": two.engine_reason,
            "seconds": [one_seconds, two_seconds],
        }


def worker(results):
    (x, y), _ = load_digits()
    x, y = x[:ROWS], y[:ROWS]
    rank = jax.process_index()
    # global batch i = rows [64 i, 64 i + 64): this process feeds its 32 of them
    rows = np.arange(ROWS).reshape(-1, 2, PER_PROCESS_BATCH)[:, rank].ravel()
    x, y = x[rows], y[rows]
    checkpoints = sys.argv[5]  # one folder that both processes see; process 0 writes it
    distribution = keras.distribution.DataParallel()
    with distribution.scope():
        model = mlp("float16")
        first = train(model, x, y, "auto", batch_size=PER_PROCESS_BATCH, shuffle=False, epochs=1,
                      checkpoint_dir=checkpoints)
        model = mlp("float16")  # a restarted job: a new model resumes from the checkpoint
        result = train(model, x, y, "auto", batch_size=PER_PROCESS_BATCH, shuffle=False, checkpoint_dir=checkpoints)
        results.update(summary(model, result))
        results.update(processes=jax.process_count(), devices=len(jax.devices()), local_devices=len(jax.local_devices()),
                       replicas_agree=replicas_agree(model), first_loss=[float(v) for v in first.history.history["loss"]],
                       initial_epoch=result.initial_epoch, epochs_trained=len(result.history.history["loss"]))


def main():
    results = {}
    start = time.perf_counter()
    if mode in ("devices", "data_parallel"):
        data_parallel_runs(results)
        batchnorm_runs(results)
        results["data_parallel_seconds"] = time.perf_counter() - start
    if mode in ("devices", "model_parallel"):
        model_parallel_runs(results)
    if mode == "worker":
        worker(results)
    results["seconds"] = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump(results, f)


main()
