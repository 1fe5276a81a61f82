"""An existing float32 Keras training script, continued in 16-bit with two added lines.

Everything outside the marked block is an ordinary Keras script: define a
model, compile it, fit it in float32. The two marked lines rebuild the trained
model in 16-bit (float16 on CUDA GPUs, bfloat16 on CPUs/TPUs) and train it
further; the float32 ``model`` itself is left as it is. The summary printed at
the end says what the model trained in and its bytes.

Run it from the repository root::

    python examples/add_two_lines.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # optional: hide TensorFlow's C++ info lines (set before importing it)

import keras

import fp16cont  # the import that goes with the two added lines
from fp16cont.bench.demo import load_digits

(x, y), (x_test, y_test) = load_digits()
keras.utils.set_random_seed(0)

model = keras.Sequential(
    [
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
model.fit(x, y, epochs=3, batch_size=64, validation_data=(x_test, y_test), verbose=2)

# ---- added: continue training in 16-bit ----------------------------------------
model16 = fp16cont.build_fp16_model(model)
result = fp16cont.continue_training(model16, x, y, epochs=3, validation_data=(x_test, y_test), verbose=2)
# ---------------------------------------------------------------------------------

print(result.summary())  # optional: per epoch, then what it trained in ("trained in pure bfloat16: ...") and bytes
