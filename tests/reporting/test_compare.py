import json
import math
import random

import keras
import ml_dtypes
import numpy as np
import pytest

import fp16cont
from fp16cont.reporting.compare import compare, copy_for_precision, resolve_precisions
from fp16cont.reporting.results import ComparisonReport, EpochRecord, RunRecord
from fp16cont.errors import (
    AlreadyLowPrecisionError,
    DataError,
    InvalidArgumentError,
    MissingDependencyError,
    MissingLossError,
)
from fp16cont.hardware import select_precision
from fp16cont.reporting.memory import METHODS
from fp16cont.reporting.plotting import plot_available
from tests.conftest import sequential_model, snapshot


def _values(model: keras.Model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.weights]


@pytest.fixture(scope="module")
def source(digits) -> keras.Model:
    """A float32 model trained on the real digits (long enough for settled BatchNorm statistics), compiled with Adam."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = sequential_model()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=128, verbose=0)
    return model


@pytest.fixture(scope="module")
def run(source, digits):
    """One comparison, float32 against bfloat16, with snapshots of the source before and after."""
    (x, y), (xt, yt) = digits
    before = snapshot(source)
    generators = (random.getstate(), np.random.get_state()[1].tobytes())
    # warmup=False: nothing here reads the warm-up (tests/test_cli_compare.py runs compare with it)
    report = compare(source, (x, y), (xt, yt), precisions=("float32", "bfloat16"), epochs=2, measure_memory=True,
                     warmup=False, verbose=0)
    assert (random.getstate(), np.random.get_state()[1].tobytes()) == generators  # seeding is scoped to each run
    return report, before, snapshot(source)


def test_the_source_model_is_left_exactly_as_it_was(run):
    _, before, after = run
    assert after == before  # weights bit for bit, dtypes, policies, compile state, optimizer state, keras.config


def test_report_has_one_run_per_precision_with_every_field(run, digits):
    report, _, _ = run
    (x, _), (xt, _) = digits
    assert isinstance(report, ComparisonReport)
    assert report.precisions == ("float32", "bfloat16")
    assert (report.train_samples, report.validation_samples, report.batch_size) == (len(x), len(xt), 128)
    assert report.backend == keras.backend.backend() and report.model_name == "seq"
    for r in report.runs:
        assert r.seed == 0 and [e.epoch for e in r.epochs] == [1, 2]
        for e in r.epochs:
            assert math.isfinite(e.loss) and math.isfinite(e.val_loss)
            assert 0.0 <= e.accuracy <= 1.0 and 0.0 <= e.val_accuracy <= 1.0
            assert e.seconds > 0 and e.samples_per_second > 0
        assert r.final.val_accuracy > max(0.5, r.initial_val_accuracy - 0.05)  # real digits: it keeps learning
        assert r.optimizer_bytes > 0  # the source's Adam settings came along, with moment slots
        assert r.peak_memory_bytes is None or r.peak_memory_bytes >= 0
    f32, b16 = report.runs
    assert b16.weight_bytes < 0.6 * f32.weight_bytes
    assert f32.loss_scale is None and b16.loss_scale is None
    assert report.memory_measure.split(":")[0] in set(METHODS) - {"off"}  # measure_memory=True measures


def test_every_precision_starts_from_the_source_weights(source, run):
    float32 = copy_for_precision(source, "float32")
    for copy, original in zip(_values(float32), _values(source)):
        assert copy.dtype == np.float32 and copy.tobytes() == original.tobytes()
    bfloat16 = copy_for_precision(source, "bfloat16")
    low = 0
    for variable, copy, original in zip(bfloat16.weights, _values(bfloat16), _values(source)):
        if str(variable.dtype) == "bfloat16":
            low += 1
            np.testing.assert_array_equal(copy, original.astype(ml_dtypes.bfloat16))  # round to nearest even
        else:
            assert copy.tobytes() == original.tobytes()  # float32 islands: exact
    assert low >= 2
    report, _, _ = run
    f32, b16 = report.runs
    assert f32.initial_val_accuracy == pytest.approx(b16.initial_val_accuracy, abs=0.02)
    assert f32.initial_val_loss == pytest.approx(b16.initial_val_loss, rel=0.02)


def test_float32_run_starts_exactly_where_the_source_is(source, run, digits):
    _, (xt, yt) = digits
    probabilities = np.asarray(keras.ops.convert_to_numpy(source(xt, training=False)), dtype=np.float64)
    expected_loss = float(np.mean(-np.log(probabilities[np.arange(len(yt)), yt])))
    expected_accuracy = float(np.mean(probabilities.argmax(axis=1) == yt))
    f32 = run[0].runs[0]
    assert f32.initial_val_accuracy == pytest.approx(expected_accuracy, abs=1e-6)
    assert f32.initial_val_loss == pytest.approx(expected_loss, rel=1e-4)


def test_seeds_fix_the_data_order_and_each_run_gets_a_fresh_optimizer(digits):
    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(3)
    uncompiled = sequential_model()
    optimizer = keras.optimizers.SGD(0.05)
    report = compare(
        uncompiled, (x[:600], y[:600]), (xt[:200], yt[:200]), precisions="float32", epochs=1, seeds=(0, 0, 1),
        optimizer=optimizer, loss="sparse_categorical_crossentropy", warmup=False, verbose=0,
    )
    first, repeat, other = report.runs
    assert [r.seed for r in report.runs] == [0, 0, 1]
    assert first.final.loss == repeat.final.loss and first.final.val_loss == repeat.final.val_loss
    assert first.final.loss != other.final.loss  # another seed shuffles the data differently
    assert first.final.accuracy is not None  # metrics default to accuracy for an uncompiled source
    assert not optimizer.built  # the instance passed in was copied, never used
    assert len(report.table(per_epoch=True).splitlines()) == 2 + 3


def test_table_shows_each_precision_and_the_measures(run):
    report, _, _ = run
    text = report.table()
    header = text.splitlines()[0]
    for column in ("trains in", "val acc before", "val acc after", "samples/s", "weight bytes", "optimizer bytes",
                   report.memory_column):
        assert column in header
    assert report.memory_column in ("RSS growth", "GPU peak", "peak memory")
    assert text.splitlines()[2].startswith("float32 ") and text.splitlines()[3].startswith("bfloat16 pure")
    assert text.splitlines()[2].endswith("| plain")  # float32: the optimizer as Keras runs it
    assert text.splitlines()[3].endswith(f"| {report.runs[1].compensation or 'plain'}")
    markdown = report.table(markdown=True)
    assert markdown.startswith("| trains in |") and markdown.splitlines()[1].startswith("| --- |")
    legend = report.legend()
    assert "bfloat16 pure: bfloat16 variables, compute and optimizer state" in legend
    assert f"{report.memory_column}: {report.memory_measure}" in legend
    per_epoch = report.table(per_epoch=True).splitlines()
    assert len(per_epoch) == 2 + 4 and per_epoch[2].split("|")[2].strip() == "1"


def test_json_holds_every_run_and_epoch(run):
    report, _, _ = run
    data = json.loads(report.to_json())
    assert [r["precision"] for r in data["runs"]] == ["float32", "bfloat16"]
    assert data["memory_measure"] == report.memory_measure
    epoch = data["runs"][1]["epochs"][1]
    assert set(epoch) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_second"}
    assert epoch["val_accuracy"] == report.runs[1].epochs[1].val_accuracy
    assert data["runs"][0]["weight_bytes"] == report.runs[0].weight_bytes


def test_json_writes_non_finite_losses_as_null():
    diverged = EpochRecord(1, float("nan"), None, float("inf"), None, 1.0, 10.0)
    report = ComparisonReport("m", "tensorflow", "cpu", 10, 0, 2, "rss", (RunRecord("float16", "float16", 0, (diverged,), None, None, 2, 0, None, 1.0),))
    epoch = json.loads(report.to_json())["runs"][0]["epochs"][0]
    assert epoch["loss"] is None and epoch["val_loss"] is None
    assert "nan" in report.table(per_epoch=True)


def test_plot_writes_an_image_or_names_the_missing_extra(run, tmp_path):
    report, _, _ = run
    if plot_available():
        path = report.plot(tmp_path / "comparison.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        with pytest.raises(InvalidArgumentError, match="image suffix"):
            report.plot(tmp_path / "comparison.unknown")
    else:
        with pytest.raises(MissingDependencyError) as err:
            report.plot(tmp_path / "comparison.png")
        assert isinstance(err.value, ImportError) and "pip install 'fp16cont[plot]'" in str(err.value)
        assert not (tmp_path / "comparison.png").exists()


def test_precision_names_resolve_for_this_hardware():
    plans = resolve_precisions(("float32", "auto", "mixed_bfloat16"))
    assert [p.requested for p in plans] == ["float32", "auto", "mixed_bfloat16"]
    assert plans[1].label == select_precision("auto", warn=False).precision
    assert (plans[2].precision, plans[2].mode, plans[2].label) == ("bfloat16", "mixed", "mixed_bfloat16")


def test_mixed_copy_keeps_float32_variables_and_16_bit_compute(source):
    copy = copy_for_precision(source, "mixed_bfloat16")
    assert {str(v.dtype) for v in copy.weights} == {"float32"}
    assert copy.layers[0].dtype_policy.name == "mixed_bfloat16"
    for a, b in zip(_values(copy), _values(source)):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    ("precisions", "match"),
    [(("float32", "float8"), "float8"), ((), "empty"), (("auto", "auto"), "twice")],
)
def test_bad_precisions_fail_before_any_training(source, digits, precisions, match):
    (x, y), _ = digits
    with pytest.raises(InvalidArgumentError, match=match):
        compare(source, (x, y), precisions=precisions, epochs=1, verbose=0)


def test_auto_and_its_format_are_the_same_run(source, digits):
    (x, y), _ = digits
    chosen = select_precision("auto", warn=False).precision
    with pytest.raises(InvalidArgumentError, match=f"names {chosen} twice"):
        compare(source, (x, y), precisions=("auto", chosen), epochs=1, verbose=0)


def test_data_that_does_not_fit_the_model_names_both_shapes(source, digits):
    (x, y), _ = digits
    with pytest.raises(DataError) as err:
        compare(source, (x.reshape(-1, 8, 8, 1), y), epochs=1, verbose=0)
    assert "(64,)" in str(err.value) and "(8, 8, 1)" in str(err.value) and "Fix" in str(err.value)
    with pytest.raises(DataError, match="pair \\(x, y\\)"):
        compare(source, x, epochs=1, verbose=0)
    with pytest.raises(DataError, match="`validation_data` holds 5 inputs and 4 targets"):
        compare(source, (x, y), (x[:5], y[:4]), epochs=1, verbose=0)


def test_uncompiled_source_needs_a_loss(digits):
    (x, y), _ = digits
    with pytest.raises(MissingLossError, match="loss="):
        compare(sequential_model(), (x, y), epochs=1, verbose=0)


def test_a_16_bit_model_is_not_a_float32_reference(source, digits):
    (x, y), _ = digits
    with pytest.raises(AlreadyLowPrecisionError, match="float32 reference"):
        compare(fp16cont.build_fp16_model(source, precision="bfloat16"), (x, y), epochs=1, verbose=0)


@pytest.mark.parametrize("seeds", [(), (-1,), ("0",), 1.5])
def test_bad_seeds(source, digits, seeds):
    (x, y), _ = digits
    with pytest.raises(InvalidArgumentError, match="`seeds`"):
        compare(source, (x, y), seeds=seeds, epochs=1, verbose=0)


def test_legend_explains_a_16bit_rss_growth_above_float32():
    """On a CPU the 16-bit run may grow RSS more (one-time costs) though its bytes are half: the legend says why."""
    from fp16cont.reporting.results import ComparisonReport, EpochRecord, RunRecord

    epoch = EpochRecord(1, 0.5, 0.9, 0.6, 0.88, 2.0, 500.0)
    runs = (RunRecord("float32", "float32", 0, (epoch,), 0.7, 0.8, 2048, 2048, 3 * 2**20, None),
            RunRecord("bfloat16", "auto", 0, (epoch,), 0.7, 0.8, 1024, 2048, 12 * 2**20, None, "kahan"))
    cpu = ComparisonReport("m", "tensorflow", "CPU", 1000, 200, 128, "rss-reset: peak resident set size", runs)
    assert cpu.memory_column == "RSS growth" and "Why 16-bit RSS growth can exceed" in cpu.legend()
    assert "mixed" not in cpu.legend() and "bfloat16 pure (auto)" in cpu.table()
    gpu = ComparisonReport("m", "tensorflow", "GPU", 1000, 200, 128, "tensorflow-gpu: peak GPU memory", runs)
    assert gpu.memory_column == "GPU peak" and "Why" not in gpu.legend()
