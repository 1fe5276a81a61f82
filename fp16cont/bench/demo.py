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

import keras
import numpy as np

from fp16cont.convert.architecture import clone_with_policies
from fp16cont.bench.datasets import load_digits
from fp16cont.convert.rebuild import build_fp16_model
from fp16cont.reporting.tables import format_bytes, render_table
from fp16cont.training.train import continue_training

__all__ = ["DemoRow", "load_digits", "digits_model", "run_demo", "render_demo", "demo_notes"]


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
        batch_size: Batch size (128, as in Continuous 16-bit Training).
        seed: Seed for weights and data order.
        verbose: Keras progress bar setting.

    Returns:
        One :class:`DemoRow` for float32 and one for 16-bit.
    """
    (x, y), (xt, yt) = load_digits(seed=seed)
    talk = verbose not in (0, False)
    keras.utils.set_random_seed(seed)
    source = digits_model()
    source.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    if talk:
        print(f"[pre-training] float32 model, Adam(1e-3), {pretrain_epochs} epoch(s) on {len(x):,} samples", flush=True)
    source.fit(x, y, epochs=pretrain_epochs, batch_size=batch_size, verbose=verbose)
    float32_copy = clone_with_policies(source, lambda layer: None)
    float32_copy.set_weights(source.get_weights())
    float32_copy.compile_from_config(source.get_compile_config())
    candidates = [("float32", float32_copy), ("", build_fp16_model(source, precision=precision))]
    rows = []
    for i, (label, model) in enumerate(candidates):
        label = label or f"{model.fp16cont_report.precision} (fp16cont pure)"
        if talk:
            print(f"[{i + 1}/{len(candidates)}] {label}: continued training, SGD(0.01), {epochs} epoch(s)", flush=True)
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
    headers = ["trains in", "acc before", "acc after", "wall s", "samples/s", "weight bytes"]
    body = [
        [r.label, f"{r.accuracy_before:.2%}", f"{r.accuracy_after:.2%}", f"{r.wall_seconds:.2f}",
         f"{r.samples_per_second:,.0f}", format_bytes(r.weight_bytes)]
        for r in rows
    ]
    return render_table(headers, body, markdown)


def demo_notes(rows: list[DemoRow], fast_16bit: bool | None = None) -> str:
    """Lines under the demo table: what each row trains in, and why 16-bit is not faster when it is not.

    Args:
        rows: The result of :func:`run_demo` (float32 first).
        fast_16bit: Whether this device has fast 16-bit arithmetic
            (:attr:`fp16cont.PrecisionChoice.fast`); ``None`` if unknown.

    Returns:
        The lines, without a trailing newline.

    Example:
        >>> print(demo_notes(rows, fast_16bit=True))  # doctest: +SKIP
    """
    reference, *others = rows
    lines = [
        f"{reference.label}: float32 variables, compute and optimizer state (the reference).",
        *(f"{r.label}: 16-bit variables, compute and optimizer state; float32 only for the normalization "
          "statistics and the output layer." for r in others),
        "weight bytes: the bytes of the model's variables (what 16-bit storage halves).",
    ]
    for row in others:
        if row.samples_per_second > 1.05 * reference.samples_per_second:
            continue
        if fast_16bit is False:
            why = "this processor has no fast 16-bit arithmetic, so 16-bit matrix products run emulated"
        else:
            why = ("the extra work of fp16cont's compensated (Kahan) update, which keeps 16-bit training as "
                   "accurate as float32, offsets the faster 16-bit matrix products of this small model; see "
                   "benchmarks/RESULTS.md for larger models")
        lines.append(f"{row.label} is not faster than float32 here: {why}.")
    return "\n".join(lines)
