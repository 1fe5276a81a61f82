"""Quickstart: train a float32 model, then continue training it in 16-bit.

Shows the three steps of fp16cont on the 8x8 digits set embedded in the
package (no network needed):

1. ``quantize_weights`` casts the float32 weights to 16-bit and audits every value,
2. ``build_fp16_model`` rebuilds the model with 16-bit variables and float32 islands,
3. ``continue_training`` trains the 16-bit model further and reports what happened.

Run it from the repository root::

    python examples/quickstart.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # optional: hide TensorFlow's C++ info lines (set before importing it)

import keras
import numpy as np

import fp16cont
from fp16cont.bench.demo import load_digits


def make_model() -> keras.Model:
    """A small float32 classifier for the 64 pixels of a digit."""
    return keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(128, activation="relu", name="hidden1"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(128, activation="relu", name="hidden2"),
            keras.layers.Dense(10, activation="softmax", name="classes"),
        ],
        name="digits",
    )


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of correctly classified samples."""
    probabilities = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    return float(np.mean(np.argmax(probabilities, axis=-1) == y))


def main() -> None:
    (x, y), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)

    # The starting point: an ordinary float32 model, trained for a while.
    model = make_model()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    print(f"float32 model: test accuracy {accuracy(model, x_test, y_test):.2%}\n")

    # 1. Cast the weights ("auto": float16 on CUDA GPUs, bfloat16 on CPUs/TPUs).
    q = fp16cont.quantize_weights(model, precision="auto")
    print(q.report.summary(), end="\n\n")

    # 2. Rebuild the model in 16-bit with those weights (the source model is not modified).
    model16, report = fp16cont.build_fp16_model(model, q, return_report=True)
    print(report.summary(), end="\n\n")

    # 3. Continue training in 16-bit (the compiled loss, metrics and optimizer carry over).
    result = fp16cont.continue_training(
        model16, x, y, epochs=2, validation_data=(x_test, y_test), verbose=0
    )
    print(result.summary())
    print(f"\n{result.precision} model: test accuracy {accuracy(model16, x_test, y_test):.2%}")


if __name__ == "__main__":
    main()
