"""Continue training a model saved as a ``.keras`` file, in 16-bit.

Both ``quantize_weights`` and ``build_fp16_model`` accept a path, so a saved
float32 model can be continued without loading it by hand. Without an
argument the script first trains a small float32 digits classifier and saves
it to a temporary ``.keras`` file; with a path it uses that file instead.
The 16-bit model is trained on the 8x8 digits set embedded in the package, so
training needs a model with 64 inputs and 10 output classes; for any other
model the script stops after the audit and the rebuild. The 16-bit model is
saved with ``model16.save(...)``.

Run it from the repository root::

    python examples/from_keras_file.py                 # make and save a model first
    python examples/from_keras_file.py model.keras     # continue an existing model
    python examples/from_keras_file.py model.keras --out model16.keras
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # optional: hide TensorFlow's C++ info lines (set before importing it)

import argparse
import sys
import tempfile
from pathlib import Path

import keras

import fp16cont
from fp16cont.bench.demo import load_digits


def save_float32_model(path: Path) -> None:
    """Train a small float32 digits classifier for 2 epochs and save it to ``path``."""
    (x, y), _ = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(path)
    print(f"saved a float32 model to {path}")


def fits_digits(model: keras.Model) -> bool:
    """Whether the model takes the 64 digit pixels and predicts 10 classes."""
    inputs, outputs = model.inputs, model.outputs
    return (
        len(inputs) == 1
        and len(outputs) == 1
        and tuple(inputs[0].shape[1:]) == (64,)
        and tuple(outputs[0].shape[1:]) == (10,)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Continue training a float32 .keras model in 16-bit.")
    parser.add_argument("model", nargs="?", type=Path, help="a float32 .keras file (default: make one)")
    parser.add_argument("--out", type=Path, help="where to save the 16-bit model (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path: Path = args.model or Path(tmp) / "float32.keras"
        if args.model is None:
            save_float32_model(path)
        out: Path = args.out or Path(tmp) / "fp16cont-16bit.keras"

        # Audit the cast straight from the file (like `python -m fp16cont audit PATH`).
        q = fp16cont.quantize_weights(path)
        print(q.report.summary(), end="\n\n")

        # Rebuild from the file; its compile config (loss, metrics, optimizer settings) carries over.
        model16, report = fp16cont.build_fp16_model(path, q, return_report=True)
        print(report.summary(), end="\n\n")

        if fits_digits(model16):
            (x, y), (x_test, y_test) = load_digits()
            loss = None if model16.compiled else "sparse_categorical_crossentropy"
            result = fp16cont.continue_training(
                model16, x, y, epochs=2, loss=loss, validation_data=(x_test, y_test), verbose=0
            )
            print(result.summary(), end="\n\n")
        else:
            print("the model does not take 64 pixels to 10 classes: not training it on the digits\n")

        model16.save(out)
        reloaded = keras.saving.load_model(out)
        dtypes = sorted({str(v.dtype) for v in reloaded.weights})
        where = "" if args.out else " (a temporary folder, removed on exit; pass --out to keep it)"
        print(f"saved the 16-bit model to {out}{where}: {out.stat().st_size:,} bytes, variable dtypes {dtypes}")


if __name__ == "__main__":
    try:
        main()
    except fp16cont.Fp16ContError as err:  # e.g. a file that is already 16-bit
        sys.exit(f"error: {type(err).__name__}: {err}")
