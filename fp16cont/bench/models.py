"""Reference float32 models: CIFAR-style ResNets and a Dense-heavy MLP.

The ResNets follow He et al., "Deep Residual Learning for Image Recognition"
(2016), section 4.2: a 3x3 convolution with 16 filters, then three stages of
``n`` residual blocks with 16, 32 and 64 filters (the second and third stage
halve the image size), global average pooling and a softmax ``Dense`` head,
``6n + 2`` weight layers in all. Every convolution is followed by batch
normalization. Where a block changes the shape, its shortcut is a strided 1x1
convolution with batch normalization (the paper's option B), which keeps the
model a plain Functional model that any Keras backend can save and load.

All builders return uncompiled float32 Functional models with fresh weights;
``keras.config`` globals are never read or changed.

Example:
    >>> model = resnet20()
    >>> model.name, model.output_shape
    ('resnet20', (None, 10))
    >>> mlp((28, 28, 1), width=64, depth=2).count_params()
    55050
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from fp16cont.errors import InvalidArgumentError, check_int, is_int

__all__ = ["resnet", "resnet20", "resnet32", "resnet56", "mlp"]

_STAGE_FILTERS = (16, 32, 64)


def resnet(depth: int, input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10) -> keras.Model:
    """A CIFAR-style ResNet of ``depth = 6n + 2`` layers (ResNet-20, -32, -56, ...).

    Args:
        depth: Number of weight layers: 6n + 2 for a whole n >= 1
            (8, 14, 20, 32, 44, 56, 110, ...).
        input_shape: ``(height, width, channels)`` of one image.
        num_classes: Units of the softmax output layer.

    Returns:
        An uncompiled float32 ``keras.Model`` named ``f"resnet{depth}"``.

    Raises:
        InvalidArgumentError: If ``depth`` is not 6n + 2, or ``input_shape`` or
            ``num_classes`` is not valid.

    Example:
        >>> resnet(8, input_shape=(28, 28, 1)).input_shape
        (None, 28, 28, 1)
    """
    blocks = _blocks_per_stage(depth)
    shape = _image_shape(input_shape)
    classes = check_int("num_classes", num_classes, 10, minimum=2)
    inputs = keras.Input(shape, name="image")
    x = _conv_bn(inputs, _STAGE_FILTERS[0], strides=1, name="stem")
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(_STAGE_FILTERS, start=1):
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _residual_block(x, filters, strides, name=f"stage{stage}_block{block}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def resnet20(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10) -> keras.Model:
    """ResNet-20 (n = 3, about 0.27 M parameters): see :func:`resnet`.

    Example:
        >>> resnet20().count_params()
        274042
    """
    return resnet(20, input_shape, num_classes)


def resnet32(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10) -> keras.Model:
    """ResNet-32 (n = 5, about 0.47 M parameters): see :func:`resnet`.

    Example:
        >>> resnet32().name
        'resnet32'
    """
    return resnet(32, input_shape, num_classes)


def resnet56(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10) -> keras.Model:
    """ResNet-56 (n = 9, about 0.86 M parameters): see :func:`resnet`.

    Example:
        >>> resnet56().name
        'resnet56'
    """
    return resnet(56, input_shape, num_classes)


def mlp(input_dim: int | Sequence[int], width: int = 1024, depth: int = 3, num_classes: int = 10) -> keras.Model:
    """A Dense-heavy classifier: ``depth`` ReLU layers of ``width`` units and a softmax head.

    Args:
        input_dim: Features per sample (``784``), or the shape of one sample
            (``(28, 28, 1)``), which is flattened first.
        width: Units of each hidden layer.
        depth: Number of hidden layers.
        num_classes: Units of the softmax output layer.

    Returns:
        An uncompiled float32 ``keras.Model`` named ``f"mlp{depth}x{width}"``.

    Raises:
        InvalidArgumentError: If an argument is not a positive integer (or
            ``input_dim`` not a shape of positive integers).

    Example:
        >>> mlp(64, width=32, depth=1).output_shape
        (None, 10)
    """
    shape = _sample_shape(input_dim)
    units = check_int("width", width, 1024, minimum=1)
    layers = check_int("depth", depth, 3, minimum=1)
    classes = check_int("num_classes", num_classes, 10, minimum=2)
    inputs = keras.Input(shape, name="features")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(shape) > 1 else inputs
    for i in range(1, layers + 1):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"mlp{layers}x{units}")


def _residual_block(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    y = _conv_bn(x, filters, strides, name=f"{name}_1")
    y = keras.layers.ReLU(name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 1, name=f"{name}_2")
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, strides, name=f"{name}_shortcut", kernel_size=1)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _conv_bn(x: keras.KerasTensor, filters: int, strides: int, name: str, kernel_size: int = 3) -> keras.KerasTensor:
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _blocks_per_stage(depth: object) -> int:
    if not is_int(depth) or depth < 8 or (depth - 2) % 6:  # type: ignore[operator]
        nearest = _nearest_depth(depth)
        raise InvalidArgumentError(
            "Argument `depth` should be 6n + 2 for a whole n >= 1 (8, 14, 20, 32, 44, 56, 110). "
            f"Received: depth={depth!r}. Fix: pass depth={nearest}, or use resnet20(), "
            "resnet32() or resnet56()."
        )
    return (int(depth) - 2) // 6  # type: ignore[call-overload]


def _nearest_depth(depth: object) -> int:
    if isinstance(depth, (int, float)) and not isinstance(depth, bool):
        n = max(1, round((float(depth) - 2) / 6))
        return 6 * n + 2
    return 20


def _image_shape(input_shape: object) -> tuple[int, int, int]:
    shape = _sample_shape(input_shape, name="input_shape")
    if len(shape) != 3:
        raise InvalidArgumentError(
            f"Argument `input_shape` should be (height, width, channels). Received: "
            f"input_shape={input_shape!r}. Fix: add the channel axis, e.g. input_shape=(28, 28, 1) "
            "for MNIST or (32, 32, 3) for CIFAR-10."
        )
    return shape  # type: ignore[return-value]


def _sample_shape(value: object, name: str = "input_dim") -> tuple[int, ...]:
    dims = (value,) if is_int(value) else value
    try:
        shape = tuple(dims)  # type: ignore[arg-type]
    except TypeError:
        shape = ()
    if not shape or any(not is_int(d) or d < 1 for d in shape):
        raise InvalidArgumentError(
            f"Argument `{name}` should be a positive integer or a shape of positive integers. "
            f"Received: {name}={value!r}. Fix: pass e.g. {name}=784 or {name}=(28, 28, 1)."
        )
    return shape
