import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fp16cont
from fp16cont import numerics
from fp16cont.errors import (
    AlreadyLowPrecisionError,
    InvalidArgumentError,
    InvalidSourceError,
    NonFiniteWeightsError,
    SourceFileNotFoundError,
    WeightOverflowError,
)
from fp16cont.convert.quantize import audit_cast
from tests.conftest import snapshot

FLOAT32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(max_dims=2, max_side=40),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
@settings(max_examples=200, deadline=None)
@given(x=FLOAT32)
def test_rounding_is_within_half_an_ulp_and_identical_to_tf_cast(precision, x):
    q = fp16cont.quantize_weights([x], precision, on_overflow="saturate")
    out = q.arrays[0]
    tf_dtype = tf.float16 if precision == "float16" else tf.bfloat16
    expected = tf.cast(tf.constant(x), tf_dtype).numpy()
    limit = numerics.facts(precision).max
    in_range = np.abs(x.astype(np.float64)) <= limit
    # bit-identical to tf.cast wherever tf.cast stays finite
    finite = np.isfinite(expected.astype(np.float32))
    assert np.array_equal(out.view(np.uint16)[finite], expected.view(np.uint16)[finite])
    err = np.abs(out.astype(np.float64) - x.astype(np.float64))
    half_ulp = numerics.ulp(x, precision) / 2
    assert np.all(err[in_range] <= half_ulp[in_range])
    # exact counts
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = x.astype(numerics.numpy_dtype(precision)).astype(np.float64)
    audit = q.report.variables[0]
    assert audit.overflow == int(np.sum(np.isinf(ref)))
    assert audit.flushed_to_zero == int(np.sum((x64 != 0) & (ref == 0)))
    assert audit.subnormal == int(np.sum((ref != 0) & np.isfinite(ref) & (np.abs(ref) < numerics.facts(precision).smallest_normal)))


def test_counts_on_known_values():
    x = np.array([1.0, 1e-9, -1e-9, 1e-6, 65504.0, 65519.0, 65520.0, -1e6, 0.0], np.float32)
    _, counts = audit_cast(x, "float16")
    assert counts["overflow"] == 2  # 65520 and -1e6 round to infinity; 65519 rounds to 65504
    assert counts["flushed_to_zero"] == 2
    assert counts["subnormal"] == 1  # 1e-6 is subnormal in float16
    assert counts["nonfinite"] == 0


def test_overflow_raises_naming_variable_largest_value_and_bfloat16():
    weights = {"big/kernel": np.array([1.0, 1e6], np.float32), "ok/bias": np.ones(3, np.float32)}
    with pytest.raises(WeightOverflowError) as err:
        fp16cont.quantize_weights(weights, "float16")
    message = str(err.value)
    assert "big/kernel" in message and "1e+06" in message and "bfloat16" in message
    assert "ok/bias" not in message


def test_saturate_clips_to_largest_finite():
    q = fp16cont.quantize_weights([np.array([1e6, -1e6, 2.0], np.float32)], "float16", on_overflow="saturate")
    assert q.arrays[0].tolist() == [65504.0, -65504.0, 2.0]
    assert q.report.variables[0].overflow == 2 and not q.report.ok


def test_keep_float32_keeps_values_exactly():
    x = np.array([1e6, 1.1], np.float32)
    q = fp16cont.quantize_weights({"w": x, "v": np.ones(2, np.float32)}, "float16", on_overflow="keep_float32")
    assert q.arrays[0].dtype == np.float32 and np.array_equal(q.arrays[0], x)
    assert q.arrays[1].dtype == np.float16
    assert q.report.float32_paths == ("w",)
    kept = q.report.variables[0]  # stored exactly: the report says so, and the cast is OK
    assert (kept.overflow, kept.flushed_to_zero, kept.max_abs_error, kept.max_rel_error) == (0, 0, 0.0, 0.0)
    assert q.report.ok


def test_integer_and_bool_variables_pass_through_untouched():
    ints = np.array([2**40, 3], np.int64)
    flags = np.array([True, False])
    q = fp16cont.quantize_weights([ints, flags, np.ones(2, np.float32)], "bfloat16")
    assert q.arrays[0].dtype == np.int64 and np.array_equal(q.arrays[0], ints)
    assert q.arrays[1].dtype == bool
    assert q.arrays[2].dtype == ml_dtypes.bfloat16
    assert [v.passed_through for v in q.report.variables] == [True, True, False]


def test_nonfinite_source_raises_or_is_counted():
    x = np.array([np.nan, np.inf, 1.0], np.float32)
    with pytest.raises(NonFiniteWeightsError, match="checkpoint"):
        fp16cont.quantize_weights([x], "bfloat16")
    q = fp16cont.quantize_weights([x], "bfloat16", on_nonfinite="keep")
    assert q.report.variables[0].nonfinite == 2 and not q.report.ok


def test_report_totals_bytes_and_summary():
    q = fp16cont.quantize_weights([np.ones((10, 10), np.float32), np.ones(5, np.float32)], "bfloat16")
    r = q.report
    assert r.bytes_before == 420 and r.bytes_after == 210
    assert r.total("count") == 105 and r.ok
    text = r.summary()
    assert "TOTAL" in text and "OK" in text and "bfloat16" in text


def test_model_source_gives_paths_in_weight_order_and_model_is_untouched(trained_model):
    before = snapshot(trained_model)
    q = fp16cont.quantize_weights(trained_model, "bfloat16")
    assert q.paths == tuple(v.path for v in trained_model.weights)
    for v, a in zip(trained_model.weights, q.arrays):
        assert tuple(v.shape) == a.shape
    assert snapshot(trained_model) == before


def test_keras_h5_and_weights_files(tmp_path, trained_model):
    keras_path = tmp_path / "m.keras"
    trained_model.save(keras_path)
    from_file = fp16cont.quantize_weights(keras_path, "bfloat16")
    direct = fp16cont.quantize_weights(trained_model, "bfloat16")
    assert all(np.array_equal(a, b) for a, b in zip(from_file.arrays, direct.arrays))
    weights_path = tmp_path / "m.weights.h5"
    trained_model.save_weights(weights_path)
    with pytest.raises(InvalidSourceError, match="model="):
        fp16cont.quantize_weights(weights_path, "bfloat16")
    from_weights = fp16cont.quantize_weights(weights_path, "bfloat16", model=trained_model)
    assert all(np.array_equal(a, b) for a, b in zip(from_weights.arrays, direct.arrays))


def test_legacy_h5_model_file(tmp_path, digits):
    from tests.conftest import sequential_model

    model = sequential_model()
    path = tmp_path / "legacy.h5"
    model.save(path)
    q = fp16cont.quantize_weights(path, "float16")
    assert len(q) == len(model.weights)


@pytest.mark.parametrize(
    "source,error",
    [
        (42, InvalidSourceError),
        ("does/not/exist.keras", SourceFileNotFoundError),
        ([np.ones(2, np.float16)], AlreadyLowPrecisionError),
    ],
)
def test_bad_sources_are_typed_errors(source, error):
    with pytest.raises(error, match="Fix"):
        fp16cont.quantize_weights(source, "bfloat16")


def test_directory_and_truncated_files(tmp_path, trained_model):
    with pytest.raises(InvalidSourceError, match="directory"):
        fp16cont.quantize_weights(tmp_path, "bfloat16")
    path = tmp_path / "m.keras"
    trained_model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidSourceError, match="complete model"):
        fp16cont.quantize_weights(path, "bfloat16")
    assert path.read_bytes() == data[: len(data) // 2]


@pytest.mark.parametrize("kwargs", [{"precision": "float8"}, {"on_overflow": "clip"}, {"on_nonfinite": "ignore"}])
def test_bad_options_are_typed_errors(kwargs):
    with pytest.raises(InvalidArgumentError, match="Received"):
        fp16cont.quantize_weights([np.ones(2, np.float32)], **{"precision": "bfloat16", **kwargs})


@pytest.mark.parametrize(
    "array",
    [np.array(["a", "b"]), np.array([b"x"]), np.array([object(), 1], dtype=object), np.array([1 + 2j], np.complex64)],
    ids=["str", "bytes", "object", "complex"],
)
def test_non_numeric_arrays_are_refused_with_a_typed_error(array):
    with pytest.raises(InvalidSourceError, match="non-numeric") as info:
        fp16cont.quantize_weights([np.ones(2, np.float32), array], "bfloat16")
    assert "1 (" in str(info.value) and "Fix:" in str(info.value)


def test_integer_and_bool_arrays_pass_through_untouched():
    counter, flags = np.array([3, 7], np.int64), np.array([True, False])
    q = fp16cont.quantize_weights({"w": np.ones(2, np.float32), "step": counter, "mask": flags}, "bfloat16")
    assert q.as_dict()["step"].tobytes() == counter.tobytes() and q.as_dict()["mask"].dtype == np.bool_
    assert [v.passed_through for v in q.report.variables] == [False, True, True]
