"""Continued training of a byte-level KerasHub GPT-2 on real English text, offline, in five precisions.

Corpus: ``pydoc_data.topics`` of the running CPython, the Python documentation's
English prose (language reference and library topics) that ships with the
interpreter, so no download is needed. Topics are split by name: every 8th
topic (sorted) is held out, the rest is the training text. Bytes are tokens
(UTF-8, vocabulary 256).

Model: ``keras_hub.models.GPT2CausalLM`` on a tiny ``GPT2Backbone`` (2 layers,
2 heads, hidden 64, sequence 64, dropout 0; 118k parameters), random init,
pre-trained in float32 with AdamW(3e-3) for ``--pretrain-steps`` steps of
batch 16. From those weights, each variant continues with AdamW(1e-4) (Keras'
default weight decay) for ``--steps`` steps of batch 16, the same windows in
the same order per seed:

  (a) float32            Keras ``fit``
  (b) Keras pure bf16    the backbone built with ``dtype="bfloat16"`` (what
                         ``set_floatx("bfloat16")`` gives), Keras ``fit``
  (c) fp16cont           ``build_fp16_model(precision="bfloat16")`` +
                         ``continue_training`` defaults (stochastic rounding)
  (c32) fp16cont, float32 token embedding: ``keep_float32=("normalization",
                         "output", "token_embedding")``: the island measurement
                         behind the default (the tied embedding in 16-bit)
  (d) Keras mixed_bf16   the backbone built with ``dtype="mixed_bfloat16"``, ``fit``
  (e) fp16cont + LoRA    (c) with ``backbone.enable_lora(8)`` after the build:
                         pure bfloat16 adapters, only they train, ``--lora-lr``
  (f) fp16cont + mixed-precision LoRA: (e) with ``lora_precision="float32"``

Reported per variant, mean over ``--seeds`` seeds (the continuation's data
order, initial state of dropout-free layers is identical): held-out loss in
nats per byte before and after, perplexity, the share of trainable values
that changed at all, weight + optimizer bytes, and training tokens/s (median
of the epochs after the first, which includes compilation).

Run:    python benchmarks/lm_continued.py            (15 runs; 18 minutes on 2 shared CPU cores)
All:    python benchmarks/lm_continued.py --variants a,b,c,c32,d,e,f
Quick:  python benchmarks/lm_continued.py --quick    (1 seed, fewer steps; about 5 minutes)
JSON:   benchmarks/results/lm_continued[_quick].json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402

CORPUS = "pydoc_data.topics"
SEQ = 64
BATCH = 16
HIDDEN = 64


def corpus() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Training and held-out byte arrays of the Python documentation topics."""
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    held = [n for i, n in enumerate(names) if i % 8 == 7]
    train = [n for n in names if n not in held]

    def encode(keys: list[str]) -> np.ndarray:
        return np.frombuffer("\n\n".join(topics.topics[k] for k in keys).encode("utf-8"), dtype=np.uint8).astype(np.int32)

    x_train, x_held = encode(train), encode(held)
    info = {"corpus": CORPUS, "python": platform.python_version(), "topics_train": len(train), "topics_held_out": len(held),
            "bytes_train": int(x_train.size), "bytes_held_out": int(x_held.size), "held_out_topics": held}
    return x_train, x_held, info


def windows(data: np.ndarray, rows: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``rows`` random windows of ``SEQ + 1`` bytes: inputs and next-byte targets."""
    starts = rng.integers(0, data.size - SEQ - 1, rows)
    ids = np.stack([data[s : s + SEQ + 1] for s in starts])
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((rows, SEQ), np.int32)}, ids[:, 1:]


def held_out(data: np.ndarray, limit: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Non-overlapping held-out windows, in order."""
    n = min(limit, (data.size - 1) // SEQ)
    ids = np.stack([data[i * SEQ : i * SEQ + SEQ + 1] for i in range(n)])
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((n, SEQ), np.int32)}, ids[:, 1:]


def make_lm(dtype: Any = None) -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=256, num_layers=2, num_heads=2, hidden_dim=HIDDEN,
                                             intermediate_dim=4 * HIDDEN, dropout=0.0, max_sequence_length=SEQ, dtype=dtype)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def loss_fn() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def evaluate(model: keras.Model, data: tuple[dict[str, np.ndarray], np.ndarray], batch: int = 128) -> float:
    """Mean held-out cross-entropy in nats per byte, from the model's logits cast to float32."""
    x, y = data
    total = 0.0
    for i in range(0, y.shape[0], batch):
        logits = model({k: v[i : i + batch] for k, v in x.items()}, training=False)
        logits = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(logits, "float32")), dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total += -np.take_along_axis(logp, y[i : i + batch][..., None], -1).sum()
    return float(total / y.size)


def nbytes(variables: Any) -> int:
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(str(v.dtype)).itemsize for v in variables))


def snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    """Every floating-point variable's values, by path."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.weights if "float" in str(v.dtype)}


def changed_share(model: keras.Model, before: dict[str, np.ndarray]) -> float:
    """Share of all floating-point values of the model that changed at all."""
    after = snapshot(model)
    moved = sum(int(np.sum(after[k] != before[k])) for k in after if k in before)
    return moved / max(1, sum(a.size for a in after.values()))


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def pretrain(x_train: np.ndarray, steps: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = make_lm()
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), loss=loss_fn())
    x, y = windows(x_train, steps * BATCH, np.random.default_rng(1000))
    keras.Model.fit(model, x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    return model


def keras_copy(source: keras.Model, dtype: Any) -> keras.Model:
    model = make_lm(dtype)
    model.set_weights(source.get_weights())
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss_fn())
    return model


def run_variant(name: str, source: keras.Model, data: tuple[Any, Any], held: Any, args: argparse.Namespace,
                seed: int) -> dict[str, Any]:
    keras.utils.set_random_seed(seed)
    x, y = data
    epochs = args.epochs
    timer = EpochTimer()
    extra: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in ("a", "b", "d"):
            model = keras_copy(source, {"a": None, "b": "bfloat16", "d": "mixed_bfloat16"}[name])
            start_loss = evaluate(model, held)
            before = snapshot(model)
            keras.Model.fit(model, x, y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
            optimizer_bytes = nbytes(model.optimizer.variables)
        else:
            islands = {"keep_float32": ("normalization", "output", "token_embedding")} if name == "c32" else {}
            model = fp16cont.build_fp16_model(source, precision="bfloat16", **islands)
            lr = 1e-4
            kwargs: dict[str, Any] = {}
            if name in ("e", "f"):
                model.backbone.enable_lora(args.lora_rank)
                lr = args.lora_lr
                kwargs["lora_precision"] = "float32" if name == "f" else "auto"
            start_loss = evaluate(model, held)
            before = snapshot(model)
            result = fp16cont.continue_training(model, x, y, optimizer=keras.optimizers.AdamW(lr), epochs=epochs,
                                                batch_size=BATCH, verbose=0, shuffle=False, seed=seed, callbacks=[timer],
                                                **kwargs)
            optimizer_bytes = result.optimizer_bytes
            extra = {"trained_in": result.summary().split("trained in ", 1)[1].split("\n")[0], "lora": result.lora,
                     "compensation": result.compensation, "engine": result.engine}
    end_loss = evaluate(model, held)
    tokens = y.size / epochs
    rates = [tokens / s for s in timer.seconds[1:]] or [tokens / s for s in timer.seconds]
    row = {"variant": name, "seed": seed, "start_loss": start_loss, "loss": end_loss, "perplexity": float(np.exp(end_loss)),
           "weight_bytes": nbytes(model.weights), "optimizer_bytes": int(optimizer_bytes),
           "tokens_s": statistics.median(rates), "trainable": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
           "changed_share": changed_share(model, before), **extra}
    row["bytes"] = row["weight_bytes"] + row["optimizer_bytes"]
    return row


LABELS = {
    "a": "(a) float32, Keras fit",
    "b": "(b) Keras pure bfloat16 (dtype='bfloat16'), fit",
    "c": "(c) fp16cont bfloat16 defaults",
    "c32": "(c32) fp16cont, token embedding float32",
    "d": "(d) Keras mixed_bfloat16, fit",
    "e": "(e) fp16cont + LoRA (bfloat16 adapters)",
    "f": "(f) fp16cont + mixed-precision LoRA (float32 adapters)",
}


def table(rows: list[dict[str, Any]], base_loss: float) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    a = by.get("a")
    a_loss = statistics.mean(r["loss"] for r in a) if a else None
    a_bytes = a[0]["bytes"] if a else None
    lines = [f"held-out loss of the float32 pre-trained model: {base_loss:.4f} nats/byte "
             f"(perplexity {np.exp(base_loss):.3f})", "",
             "| variant | held-out loss (mean ± half-range) | Δ from start | vs (a) | perplexity | values changed | "
             "weight+opt bytes | vs (a) | tokens/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rs in by.items():
        losses = [r["loss"] for r in rs]
        mean = statistics.mean(losses)
        half = (max(losses) - min(losses)) / 2
        delta = statistics.mean(r["loss"] - r["start_loss"] for r in rs)
        vs = f"{(mean / a_loss - 1) * 100:+.2f}%" if a_loss else "-"
        changed = f"{statistics.mean(r['changed_share'] for r in rs):.1%}"
        bytes_vs = f"{rs[0]['bytes'] / a_bytes:.3f}x" if a_bytes else "-"
        lines.append(f"| {LABELS[name]} | {mean:.4f} ± {half:.4f} | {delta:+.4f} | {vs} | {np.exp(mean):.3f} | {changed} | "
                     f"{rs[0]['bytes']:,} | {bytes_vs} | {statistics.median(r['tokens_s'] for r in rs):,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=90, help="continued-training steps (batch 16)")
    parser.add_argument("--epochs", type=int, default=3, help="the steps are split in this many epochs (timing)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--variants", default="a,b,c,d,e", help="also: c32, f")
    parser.add_argument("--held-out-windows", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 pre-training and 60 continued steps")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.pretrain_steps, args.steps, args.epochs = 1, 200, 60, 3
    started = time.perf_counter()
    x_train, x_held, info = corpus()
    held = held_out(x_held, args.held_out_windows)
    source = pretrain(x_train, args.pretrain_steps)
    base_loss = evaluate(source, held)
    print(f"{CORPUS} (Python {info['python']}): {info['bytes_train']:,} training bytes ({info['topics_train']} topics), "
          f"{info['bytes_held_out']:,} held-out bytes ({info['topics_held_out']} topics); pre-trained "
          f"{args.pretrain_steps} steps in {time.perf_counter() - started:.0f}s; held-out loss {base_loss:.4f}", flush=True)
    rows = []
    steps = args.steps - args.steps % args.epochs
    for seed in range(args.seeds):
        data = windows(x_train, steps * BATCH, np.random.default_rng(seed))
        for name in [v for v in args.variants.split(",") if v]:
            row = run_variant(name, source, data, held, args, seed)
            rows.append(row)
            print(f"seed {seed} {name}: loss {row['start_loss']:.4f} -> {row['loss']:.4f}, {row['bytes']:,} B, "
                  f"{row['tokens_s']:,.0f} tok/s", flush=True)
    text = table(rows, base_loss)
    a = [r for r in rows if r["variant"] == "a"]
    targets = []
    if a:
        a_loss = statistics.mean(r["loss"] for r in a)
        for name, label in (("c", "(c) within 1% of (a) at <= 0.55x bytes"),):
            rs = [r for r in rows if r["variant"] == name]
            if rs:
                loss = statistics.mean(r["loss"] for r in rs)
                ratio = rs[0]["bytes"] / a[0]["bytes"]
                targets.append(f"{label}: {(loss / a_loss - 1) * 100:+.2f}%, {ratio:.3f}x -> "
                               f"{'met' if loss <= a_loss * 1.01 and ratio <= 0.55 else 'NOT met'}")
    for name, label in (("b", "(b) fails: no movement"), ("e", "(e) learns"), ("f", "(f) learns")):
        rs = [r for r in rows if r["variant"] == name]
        if rs:
            delta = statistics.mean(r["loss"] - r["start_loss"] for r in rs)
            targets.append(f"{label}: held-out loss moved {delta:+.4f}")
    text += "\n\n" + "\n".join(targets)
    text += f"\n\n{len(rows)} runs, {time.perf_counter() - started:.0f}s in all, Keras {keras.__version__} ({keras.backend.backend()})"
    print(text, flush=True)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"lm_continued{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"corpus": info, "args": vars(args), "base_loss": base_loss, "rows": rows, "table": text,
                               "keras": keras.__version__, "backend": keras.backend.backend()}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
