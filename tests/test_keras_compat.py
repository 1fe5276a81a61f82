"""Private Keras names are used in fp16cont/_keras_compat.py only, each behind a checked function."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from fp16cont import _keras_compat as compat

PACKAGE = Path(__file__).resolve().parents[1] / "fp16cont"


def _keras_private_names() -> set[str]:
    """Every single-underscore name of the Keras classes fp16cont works with, and of live instances."""
    classes = [
        keras.Model, keras.Sequential, keras.layers.Layer, keras.layers.Dense, keras.optimizers.Optimizer,
        keras.optimizers.Adam, keras.optimizers.AdamW, keras.optimizers.SGD, keras.optimizers.LossScaleOptimizer,
        keras.Variable, keras.KerasTensor, keras.callbacks.Callback, keras.DTypePolicy,
        keras.dtype_policies.DTypePolicyMap, keras.metrics.Metric, keras.losses.Loss,
    ]
    names = {n for c in classes for n in dir(c) if n.startswith("_") and not n.startswith("__")}
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.AdamW(), "mse")
    model.fit(np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32"), verbose=0)
    for obj in (model, model.layers[0], model.optimizer, model.weights[0], model.outputs[0]):
        names |= {n for n in vars(obj) if n.startswith("_") and not n.startswith("__")}
    return names


_ATTRIBUTE = re.compile(r"\.(_[A-Za-z]\w*)\b")  # obj._name
_BY_NAME = re.compile(r"(?:get|has|set)attr\([^,()]+,\s*[\"'](_[A-Za-z]\w*)[\"']")  # getattr(obj, "_name")
_OVERRIDE = re.compile(r"^\s+def (_[A-Za-z]\w*)\(self")  # a method overriding a private hook


def test_private_keras_names_only_in_the_compat_module():
    private = _keras_private_names()
    assert "_flatten_layers" in private and "_get_variable_index" in private  # the scan sees Keras' internals
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keras_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if "keras.src" in code:
                found.append(f"{path.relative_to(PACKAGE)}:{number}: keras.src")
            hits = [m.group(1) for pattern in (_ATTRIBUTE, _BY_NAME, _OVERRIDE) for m in pattern.finditer(code)]
            found += [f"{path.relative_to(PACKAGE)}:{number}: {name}" for name in hits if name in private]
    assert not found, "private Keras names outside fp16cont/_keras_compat.py:\n" + "\n".join(found)


def test_missing_internal_names_the_supported_range():
    with pytest.raises(compat.UnsupportedKerasError, match=r"supports Keras 3\.8 up to .*4\.0.*Fix: pip install"):
        compat.flatten_layers(object())


def test_loss_scale_hooks_are_the_ones_keras_calls():
    from fp16cont.optim.loss_scale import DynamicLossScale

    compat.check_loss_scale_hooks()
    for private, own in compat.LOSS_SCALE_HOOKS.items():
        assert getattr(keras.optimizers.LossScaleOptimizer, private) is not getattr(DynamicLossScale, own)
        assert getattr(DynamicLossScale, private) is getattr(DynamicLossScale, own)
