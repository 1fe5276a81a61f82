"""Child process for the kill-and-resume test: one deterministic continued-training run."""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from fp16cont.bench.demo import load_digits  # noqa: E402


class Slow(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.02)


def main(checkpoint_dir: str, out: str, slow: bool, compensation: str) -> None:
    (x, y), _ = load_digits()
    keras.utils.set_random_seed(0)
    source = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                               keras.layers.BatchNormalization(), keras.layers.Dense(10, activation="softmax")])
    model16 = fp16cont.build_fp16_model(source, precision="bfloat16", verify=False)
    result = fp16cont.continue_training(
        model16, x, y, epochs=4, batch_size=32, shuffle=False, loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9), compensation=compensation,
        checkpoint_dir=checkpoint_dir, callbacks=[Slow()] if slow else [], verbose=0,
    )
    np.savez(out, initial_epoch=result.initial_epoch,
             **{f"w{i}": np.asarray(w).view(np.uint8) for i, w in enumerate(model16.get_weights())})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "slow", sys.argv[4])
