"""Fine-tune a KerasHub causal language model in pure 16-bit, fully, then with LoRA.

A real job would start from a pre-trained preset
(``keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")``, a download).
To run offline on a CPU (83 s of CPU time here), this example builds a tiny GPT-2
with byte-level tokens (ids 0-255, no tokenizer file needed) and gives it a
short float32 pre-training on real English text that ships with Python
(``pydoc_data.topics``, the Python documentation's prose). From there on it
is what you would do with the preset (two minutes of CPU time at most):

1. ``build_fp16_model`` rebuilds the model in bfloat16 (layer norms keep
   float32 parameters; the tied token embedding, which also makes the
   logits, is 16-bit like the body) and says what it built;
2. ``continue_training`` fine-tunes every weight, with the
   ``{"token_ids", "padding_mask"}`` dict inputs KerasHub models take;
3. ``backbone.enable_lora(rank)`` + ``continue_training`` trains only the
   LoRA adapters, in bfloat16 with stochastically rounded updates
   (``lora_precision="float32"`` would keep them float32).

Run it from the repository root::

    python examples/finetune_keras_hub.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

import keras
import keras_hub
import numpy as np
import pydoc_data.topics

import fp16cont

SEQ = 64
warnings.simplefilter("ignore", fp16cont.PerformanceWarning)  # bfloat16 on a CPU without bfloat16 instructions


def byte_windows(text: str, rows: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``rows`` random windows of the text as bytes: model inputs and next-byte targets."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype("int32")
    starts = np.random.default_rng(seed).integers(0, data.size - SEQ - 1, rows)
    ids = np.stack([data[s : s + SEQ + 1] for s in starts])
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((rows, SEQ), "int32")}, ids[:, 1:]


def held_out_loss(model: keras.Model, x: dict[str, np.ndarray], y: np.ndarray) -> float:
    """Mean cross-entropy per byte of ``model`` on ``(x, y)``."""
    logits = keras.ops.cast(model(x, training=False), "float32")
    return float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))


topics = sorted(pydoc_data.topics.topics)
held = topics[7::8]  # every 8th topic is held out
train_text = "\n\n".join(pydoc_data.topics.topics[t] for t in topics if t not in held)
held_text = "\n\n".join(pydoc_data.topics.topics[t] for t in held)
x_pre, y_pre = byte_windows(train_text, 3072, seed=0)  # for the stand-in pre-training
x_train, y_train = byte_windows(train_text, 1024, seed=1)  # for the fine-tuning
x_held, y_held = byte_windows(held_text, 256, seed=2)

# A stand-in for a pre-trained preset: a tiny GPT-2 trained briefly in float32.
keras.utils.set_random_seed(0)
backbone = keras_hub.models.GPT2Backbone(vocabulary_size=256, num_layers=2, num_heads=2, hidden_dim=64,
                                         intermediate_dim=256, dropout=0.0, max_sequence_length=SEQ)
model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
model.compile(optimizer=keras.optimizers.AdamW(2e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
keras.Model.fit(model, x_pre, y_pre, batch_size=32, epochs=1, verbose=0)  # Keras' own fit on arrays
print(f"float32 model: held-out loss {held_out_loss(model, x_held, y_held):.4f} nats/byte")

# 1. Rebuild in bfloat16 and see what was built.
model16, report = fp16cont.build_fp16_model(model, precision="bfloat16", return_report=True)
print(report.summary())

# 2. Full fine-tuning in pure bfloat16 on the dict inputs.
result = fp16cont.continue_training(model16, x_train, y_train, optimizer=keras.optimizers.AdamW(1e-4),
                                    epochs=1, batch_size=32, verbose=0)
print(result.summary())
print(f"full fine-tuning, bfloat16: held-out loss {held_out_loss(model16, x_held, y_held):.4f}")

# 3. LoRA: only the adapters train, in bfloat16.
lora16 = fp16cont.build_fp16_model(model, precision="bfloat16")
lora16.backbone.enable_lora(8)
result = fp16cont.continue_training(lora16, x_train, y_train, optimizer=keras.optimizers.AdamW(1e-3),
                                    epochs=1, batch_size=32, verbose=0)
print(result.lora)
print(f"LoRA, bfloat16 adapters: held-out loss {held_out_loss(lora16, x_held, y_held):.4f}")
