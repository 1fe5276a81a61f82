from pathlib import Path

import numpy as np
import pytest

from fp16cont.bench.datasets import load_dataset
from fp16cont.errors import DataError, InvalidArgumentError, InvalidSourceError

MNIST = Path(__file__).resolve().parents[2].parent / "shared/data/mnist.npz"
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"the real MNIST file is not at {MNIST}")


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def small_npz(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return _write(
        tmp_path / "small.npz",
        x_train=rng.integers(0, 256, (30, 6, 5), dtype=np.uint8),
        y_train=rng.integers(0, 10, (30, 1), dtype=np.uint8),
        x_test=rng.integers(0, 256, (12, 6, 5), dtype=np.uint8),
        y_test=rng.integers(0, 10, (12,), dtype=np.int64),
    )


def test_npz_images_get_a_channel_axis_and_scale_to_unit_range(small_npz):
    raw = np.load(small_npz)
    (x, y), (xt, yt) = load_dataset(small_npz)
    assert x.shape == (30, 6, 5, 1) and xt.shape == (12, 6, 5, 1)
    assert x.dtype == np.float32 and xt.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], raw["x_train"].astype(np.float32) / 255)
    assert y.shape == (30,) and y.dtype == np.int32 and yt.dtype == np.int32
    np.testing.assert_array_equal(y, raw["y_train"][:, 0])
    np.testing.assert_array_equal(yt, raw["y_test"])


def test_limit_keeps_the_first_samples_of_each_split(small_npz):
    (x, y), (xt, yt) = load_dataset(str(small_npz), limit=7)
    (x_all, y_all), (xt_all, _) = load_dataset(small_npz)
    assert len(x) == len(y) == 7 and len(xt) == len(yt) == 7
    np.testing.assert_array_equal(x, x_all[:7])
    np.testing.assert_array_equal(xt, xt_all[:7])
    (x_big, _), (xt_big, _) = load_dataset(small_npz, limit=1000)
    assert len(x_big) == 30 and len(xt_big) == 12


def test_float_color_images_in_unit_range_pass_through(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((4, 3, 3, 3)).astype(np.float64)
    path = _write(tmp_path / "f.npz", x_train=x, y_train=np.arange(4.0), x_test=x[:2], y_test=np.zeros(2))
    (xs, ys), _ = load_dataset(path)
    assert xs.shape == (4, 3, 3, 3) and xs.dtype == np.float32
    np.testing.assert_allclose(xs, x.astype(np.float32))
    np.testing.assert_array_equal(ys, [0, 1, 2, 3])


@needs_mnist
def test_real_mnist_with_limit():
    (x, y), (xt, yt) = load_dataset(MNIST, limit=1000)
    assert x.shape == (1000, 28, 28, 1) and xt.shape == (1000, 28, 28, 1)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first MNIST labels
    assert yt[:3].tolist() == [7, 2, 1]
    assert set(np.unique(y).tolist()) == set(range(10))


@needs_mnist
def test_real_mnist_in_full():
    (x, y), (xt, yt) = load_dataset(MNIST)
    assert x.shape == (60000, 28, 28, 1) and len(y) == 60000
    assert xt.shape == (10000, 28, 28, 1) and len(yt) == 10000


def test_missing_file_is_a_data_error_with_a_fix(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataError) as err:
        load_dataset(missing)
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message and "Fix" in message and "cifar10" in message


def test_unknown_name_is_a_data_error():
    with pytest.raises(DataError, match="neither a known name"):
        load_dataset("cifar100")


def test_missing_keys_are_named(tmp_path):
    path = _write(tmp_path / "partial.npz", x_train=np.zeros((2, 3, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert "x_test, y_test" in str(err.value) and "holds x_train, y_train" in str(err.value)


def test_a_file_that_is_not_an_npz_archive(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("not an archive")
    with pytest.raises(DataError, match="Cannot read .* as a .npz archive"):
        load_dataset(path)


def test_wrong_argument_type_and_bad_limit(small_npz):
    with pytest.raises(InvalidSourceError, match="name_or_path of type int"):
        load_dataset(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="limit=0"):
        load_dataset(small_npz, limit=0)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.full((2, 3, 3), 2.0), np.zeros(2), "should be finite and lie in \\[0, 1\\]"),
        (np.full((2, 3, 3), 300, np.int32), np.zeros(2), "should lie in \\[0, 255\\]"),
        (np.zeros((2, 9), np.uint8), np.zeros(2), "should hold images"),
        (np.zeros((2, 3, 3), np.uint8), np.eye(2), "one-hot"),
        (np.zeros((2, 3, 3), np.uint8), np.array([0.5, 1.0]), "integer class label"),
        (np.zeros((2, 3, 3), np.uint8), np.zeros(3), "has 2 samples but y_train has 3"),
    ],
)
def test_arrays_that_are_not_images_with_labels(tmp_path, x, y, match):
    path = _write(tmp_path / "bad.npz", x_train=x, y_train=y, x_test=np.zeros((1, 3, 3), np.uint8), y_test=np.zeros(1))
    with pytest.raises(DataError, match=match):
        load_dataset(path)


def test_embedded_digits_by_name_need_no_file_and_no_network():
    (x, y), (xt, yt) = load_dataset("digits")
    assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))
