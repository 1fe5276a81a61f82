import json
import os
import sys

import keras
import numpy as np
import pytest

import fp16cont
from fp16cont.cli import main
from fp16cont.reporting.plotting import plot_available
from tests.conftest import start_beside


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory, digits):
    """The real 8x8 digits as 8-bit images in the keras.datasets .npz layout."""
    (x, y), (xt, yt) = digits
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    to_pixels = lambda a: np.round(a.reshape(-1, 8, 8) * 255).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_pixels(x[:400]), y_train=y[:400], x_test=to_pixels(xt[:120]), y_test=yt[:120])
    return path


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="tiny",
    )
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def test_compare_command_prints_the_table_and_writes_the_files(tiny_model_file, digits_npz, tmp_path, capsys):
    out = tmp_path / "results"
    status = main(
        ["compare", str(tiny_model_file), "--data", str(digits_npz), "--epochs", "2", "--precisions",
         "float32,bfloat16", "--batch-size", "64", "--limit", "300", "--out", str(out), "--progress", "0"]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "300 training and 120 validation samples" in printed
    table = [line for line in printed.splitlines() if line.startswith(("trains in ", "float32 ", "bfloat16 pure "))]
    assert [line.split("|")[0].strip() for line in table] == ["trains in", "float32", "bfloat16 pure"]
    assert "bfloat16 pure: bfloat16 variables, compute and optimizer state" in printed
    markdown = (out / "comparison.md").read_text()
    assert "| trains in |" in markdown and "| bfloat16 pure |" in markdown and "weight bytes / optimizer bytes" in markdown
    data = json.loads((out / "comparison.json").read_text())
    assert [r["precision"] for r in data["runs"]] == ["float32", "bfloat16"]
    assert data["train_samples"] == 300 and len(data["runs"][0]["epochs"]) == 2
    if plot_available():
        assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert not (out / "comparison.png").exists()
        assert "no plot: matplotlib is not installed (pip install 'fp16cont[plot]'" in printed


def test_data_that_does_not_fit_the_model_exits_2_naming_both_shapes(tmp_path, capsys):
    model_path = tmp_path / "resnet8.keras"
    fp16cont.resnet(8).save(model_path)  # CIFAR-shaped: 32x32x3
    data_path = tmp_path / "mnist_like.npz"
    images = np.zeros((4, 28, 28), np.uint8)
    np.savez(data_path, x_train=images, y_train=np.zeros(4), x_test=images, y_test=np.zeros(4))
    status = main(["compare", str(model_path), "--data", str(data_path), "--epochs", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2
    assert "DataError" in err and "(32, 32, 3)" in err and "(28, 28, 1)" in err


def test_unknown_precision_and_missing_data_exit_2(tiny_model_file, digits_npz, tmp_path, capsys):
    assert main(["compare", str(tiny_model_file), "--data", str(digits_npz), "--precisions", "float32,fp8"]) == 2
    assert "InvalidArgumentError" in capsys.readouterr().err
    assert main(["compare", str(tiny_model_file), "--data", str(tmp_path / "none.npz")]) == 2
    assert "DataError" in capsys.readouterr().err


def test_existing_subcommands_still_parse():
    with pytest.raises(SystemExit) as done:
        main(["compare", "--help"])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0


def test_compare_on_the_embedded_digits_labels_each_run(tmp_path, capsys):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path / "digits_model.keras"
    model.save(path)
    status = main(["compare", str(path), "--data", "digits", "--limit", "200", "--precisions", "float32,bfloat16",
                   "--no-warmup", "--progress", "1"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "on digits: 200 training and 200 validation samples" in printed
    assert "[1/2] float32, seed 0" in printed and "[2/2] bfloat16 (fp16cont pure), seed 0" in printed


@pytest.fixture(scope="module", autouse=True)
def offline_mnist(request, tmp_path_factory):
    """No Keras cache and no way out (a proxy on a closed port): ``--data mnist`` in a child process, started with
    the module so that it runs beside the module's other tests."""
    home = tmp_path_factory.mktemp("offline")
    env = {**os.environ, "KERAS_HOME": str(home / "keras"), "HOME": str(home),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    yield from start_beside(request, "test_offline_named_data_set_says_in_one_line_how_to_get_it",
                            [sys.executable, "-m", "fp16cont", "compare", str(home / "unused.keras"), "--data", "mnist"],
                            env=env)


@pytest.mark.subprocess
def test_offline_named_data_set_says_in_one_line_how_to_get_it(offline_mnist):
    """No Keras cache and no way out (a proxy on a closed port): --data mnist fails in one line, with the fix."""
    _, stderr = offline_mnist.communicate(timeout=300)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert offline_mnist.returncode == 2 and len(errors) == 1, stderr
    assert "DataError" in errors[0] and "mnist.npz" in errors[0] and "digits" in errors[0]
    assert "storage.googleapis.com" in errors[0]
    assert "cuInit" not in stderr and "cudart" not in stderr  # the quiet start
