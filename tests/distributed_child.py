"""Child process for the distribution tests (TensorFlow's devices must be set before it starts).

    python distributed_child.py tf OUT.json           one device, then MirroredStrategy over two logical CPUs
    python distributed_child.py jax OUT.json          one JAX host device, then DataParallel over two
    python distributed_child.py multiworker OUT.json  one worker of MultiWorkerMirroredStrategy (TF_CONFIG)

Each mode writes {run name: {precision: result}}: "single" and "mirrored", "single" and "dataparallel",
or "multiworker". The one-device reference runs in the same process as the distributed run it is compared
with (one interpreter and backend start instead of two), before any distribution is set.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

mode, out = sys.argv[1], sys.argv[2]
if mode == "jax":
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if mode == "tf":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import fp16cont  # noqa: E402
from fp16cont.bench.demo import load_digits  # noqa: E402


class _NoStrategy:
    num_replicas_in_sync = 1

    def scope(self):
        import contextlib

        return contextlib.nullcontext()


class _JaxDataParallel(_NoStrategy):
    """keras.distribution's DataParallel over the host devices, set when the run starts."""

    def __init__(self):
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        self.num_replicas_in_sync = len(keras.distribution.distribution().device_mesh.devices.ravel())


def strategy(run):
    if run == "mirrored":
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if run == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if run == "dataparallel":
        return _JaxDataParallel()
    return _NoStrategy()


def train(run, x, y, xt, yt):
    chosen = strategy(run)
    keras.utils.set_random_seed(0)
    results = {}
    with chosen.scope():
        # no BatchNormalization: its batch statistics are per replica, which would change the math
        source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                                   keras.layers.Dense(10, activation="softmax")])
        for precision in ("bfloat16", "float16"):
            try:
                model = fp16cont.build_fp16_model(source, precision=precision, verify=False)
            except fp16cont.UnsupportedBackendError as err:
                results[precision] = {"error": str(err)}
                continue
            result = fp16cont.continue_training(
                model, x, y, epochs=3, batch_size=64, shuffle=False, optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"], verbose=0,
            )
            probabilities = model.predict(xt, verbose=0)
            results[precision] = {
                "accuracy": float(np.mean(np.argmax(probabilities, -1) == yt)),
                "loss_scale": result.loss_scale,
                "weights": [np.asarray(w, np.float32).ravel().tolist() for w in model.get_weights()],
                "replicas": int(chosen.num_replicas_in_sync),
                "compensation": result.compensation,
            }
    return results


def main() -> None:
    (x, y), (xt, yt) = load_digits()
    x, y = x[:1408], y[:1408]  # whole batches of 64: a data-parallel batch splits evenly over the devices
    runs = {"tf": ("single", "mirrored"), "jax": ("single", "dataparallel"), "multiworker": ("multiworker",)}[mode]
    results = {run: train(run, x, y, xt, yt) for run in runs}
    with open(out, "w") as f:
        json.dump(results, f)


main()
