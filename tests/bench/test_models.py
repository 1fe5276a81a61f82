import keras
import numpy as np
import pytest

from fp16cont.errors import InvalidArgumentError
from fp16cont.bench.models import mlp, resnet, resnet20, resnet32, resnet56


def _weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """3x3 convolutions and Dense layers: the layers the paper's depth counts."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
        or (isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3))
    ]


@pytest.mark.parametrize(
    ("builder", "depth", "params"),
    [(resnet20, 20, 274_042), (resnet32, 32, 469_370), (resnet56, 56, 860_026)],
)
def test_cifar_resnets_have_the_papers_depth_and_size(builder, depth, params):
    model = builder()
    assert model.name == f"resnet{depth}"
    assert len(_weight_layers(model)) == depth
    assert model.count_params() == params  # ~0.27 M, 0.46 M, 0.85 M in the paper (option A shortcuts)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert {str(v.dtype) for v in model.weights} == {"float32"}
    assert not model.compiled


def test_resnet_stages_halve_the_image_and_double_the_filters():
    model = resnet(8, input_shape=(28, 28, 1), num_classes=3)
    assert model.get_layer("stage1_block1_out").output.shape[1:] == (28, 28, 16)
    assert model.get_layer("stage2_block1_out").output.shape[1:] == (14, 14, 32)
    assert model.get_layer("stage3_block1_out").output.shape[1:] == (7, 7, 64)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers) == 7 + 2
    probabilities = np.asarray(model(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)))
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_resnet_saves_and_loads_as_a_keras_file(tmp_path):
    model = resnet(8, input_shape=(8, 8, 3))
    model.save(tmp_path / "r.keras")
    loaded = keras.saving.load_model(tmp_path / "r.keras")
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize(("depth", "suggested"), [(21, "depth=20"), (7, "depth=8"), (33, "depth=32"), (20.0, "depth=20")])
def test_resnet_depth_not_6n_plus_2_raises_with_the_nearest_valid_depth(depth, suggested):
    with pytest.raises(InvalidArgumentError, match="6n \\+ 2") as err:
        resnet(depth)
    assert f"depth={depth!r}" in str(err.value) and suggested in str(err.value) and "Fix" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"input_shape": (32, 0, 3)}, "input_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
    ],
)
def test_resnet_bad_shape_or_classes_raise(kwargs, name):
    with pytest.raises(InvalidArgumentError, match=f"`{name}`"):
        resnet(8, **kwargs)


def test_mlp_is_dense_heavy_with_the_requested_widths():
    model = mlp(784)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [l.units for l in dense] == [1024, 1024, 1024, 10]
    assert model.count_params() == 784 * 1024 + 1024 + 2 * (1024 * 1024 + 1024) + 1024 * 10 + 10
    assert dense[-1].activation is keras.activations.softmax
    assert model.name == "mlp3x1024" and not model.compiled


def test_mlp_flattens_image_inputs():
    model = mlp((28, 28, 1), width=16, depth=1, num_classes=4)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 4)
    assert any(isinstance(l, keras.layers.Flatten) for l in model.layers)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"width": 0}, "width"), ({"depth": -1}, "depth"), ({"input_dim": "784"}, "input_dim"), ({"input_dim": ()}, "input_dim")],
)
def test_mlp_bad_arguments_raise(kwargs, name):
    args = {"input_dim": 784, **kwargs}
    with pytest.raises(InvalidArgumentError, match=f"`{name}`") as err:
        mlp(**args)
    assert "Fix" in str(err.value)
