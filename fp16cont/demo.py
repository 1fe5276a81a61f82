"""The main job: continue training a float32 model in float32 and in 16-bit.

Uses the 8x8 handwritten digits shipped inside the package (real data, no
network). A float32 MLP is trained briefly, then copies of it continue
training in float32 and in 16-bit from the same weights and data order, and a
table compares them.

Example:
    >>> rows = run_demo(pretrain_epochs=1, epochs=1, verbose=0)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources

import keras
import numpy as np

from fp16cont.architecture import clone_with_policies
from fp16cont.rebuild import build_fp16_model
from fp16cont.tables import format_bytes, render_table
from fp16cont.train import continue_training

__all__ = ["DemoRow", "load_digits", "digits_model", "run_demo", "render_demo"]


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table.

    Attributes:
        label: What was trained (``"float32"``, ``"bfloat16 (fp16cont pure)"``).
        accuracy_before: Test accuracy of the starting weights in this precision.
        accuracy_after: Test accuracy after continued training.
        wall_seconds: Wall time of the continued training.
        samples_per_second: Mean training throughput after the first epoch.
        weight_bytes: Bytes of the model's variables.
    """

    label: str
    accuracy_before: float
    accuracy_after: float
    wall_seconds: float
    samples_per_second: float
    weight_bytes: int


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The embedded digits set, scaled to [0, 1] and split train/test.

    Args:
        test_fraction: Share of samples held out for testing.
        seed: Seed of the shuffle before the split.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` with ``x`` of shape (n, 64).
    """
    with resources.files("fp16cont").joinpath("data/digits.npz").open("rb") as f:
        data = np.load(f)
        x = data["images"].reshape(-1, 64).astype("float32") / 16.0
        y = data["labels"].astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return (x[train], y[train]), (x[test], y[test])


def digits_model(width: int = 1024) -> keras.Model:
    """A Dense-heavy float32 classifier for the 64-pixel digits.

    Args:
        width: Units of each hidden layer.

    Returns:
        An uncompiled, built model.
    """
    return keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="classes"),
        ],
        name="digits_mlp",
    )


def run_demo(
    pretrain_epochs: int = 3,
    epochs: int = 8,
    precision: str = "auto",
    batch_size: int = 128,
    seed: int = 0,
    verbose: int | str = "auto",
) -> list[DemoRow]:
    """Train in float32, then continue in float32 and in 16-bit side by side.

    Args:
        pretrain_epochs: Float32 epochs that make the "pre-trained" model.
        epochs: Epochs of continued training for each precision.
        precision: The 16-bit format (``"auto"`` picks it for this hardware).
        batch_size: Batch size (the paper's 128).
        seed: Seed for weights and data order.
        verbose: Keras progress bar setting.

    Returns:
        One :class:`DemoRow` for float32 and one for 16-bit.
    """
    (x, y), (xt, yt) = load_digits(seed=seed)
    keras.utils.set_random_seed(seed)
    source = digits_model()
    source.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    source.fit(x, y, epochs=pretrain_epochs, batch_size=batch_size, verbose=verbose)
    float32_copy = clone_with_policies(source, lambda layer: None)
    float32_copy.set_weights(source.get_weights())
    float32_copy.compile_from_config(source.get_compile_config())
    candidates = [("float32", float32_copy), ("", build_fp16_model(source, precision=precision))]
    rows = []
    for label, model in candidates:
        label = label or f"{model.fp16cont_report.precision} (fp16cont pure)"
        rows.append(_continue(label, model, (x, y), (xt, yt), epochs, batch_size, seed, verbose))
    return rows


def _continue(label, model, train, test, epochs, batch_size, seed, verbose) -> DemoRow:  # type: ignore[no-untyped-def]
    before = _accuracy(model, *test)
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    result = continue_training(
        model, *train, epochs=epochs, batch_size=batch_size, optimizer="sgd", verbose=verbose
    )
    wall = time.perf_counter() - start
    steady = result.samples_per_second[1:] or result.samples_per_second
    return DemoRow(label, before, _accuracy(model, *test), wall, float(np.mean(steady)), result.weight_bytes)


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    probabilities = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(np.asarray(probabilities, dtype=np.float32), -1) == y))


def render_demo(rows: list[DemoRow], markdown: bool = False) -> str:
    """Render the demo rows as a table.

    Args:
        rows: The result of :func:`run_demo`.
        markdown: Emit a Markdown table.

    Returns:
        The table.
    """
    headers = ["precision", "acc before", "acc after", "wall s", "samples/s", "weight bytes"]
    body = [
        [r.label, f"{r.accuracy_before:.2%}", f"{r.accuracy_after:.2%}", f"{r.wall_seconds:.2f}",
         f"{r.samples_per_second:,.0f}", format_bytes(r.weight_bytes)]
        for r in rows
    ]
    return render_table(headers, body, markdown)
