import ml_dtypes
import numpy as np
import pytest

from fp16cont import numerics


@pytest.mark.parametrize(
    "name,maximum,normal,mantissa",
    [("float16", 65504.0, 2.0**-14, 10), ("bfloat16", 3.3895313892515355e38, 2.0**-126, 7), ("float32", 3.4028234663852886e38, 2.0**-126, 23)],
)
def test_facts_match_the_formats(name, maximum, normal, mantissa):
    f = numerics.facts(name)
    assert f.max == maximum
    assert f.smallest_normal == normal
    assert f.mantissa_bits == mantissa
    assert f.bytes == (4 if name == "float32" else 2)


def test_float16_smallest_subnormal_is_two_to_minus_24():
    assert numerics.facts("float16").smallest_subnormal == 2.0**-24


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("value", [1.0, 3.0, 1000.0, 1e-3, 2.0**-20, 1e-7])
def test_ulp_equals_distance_to_next_representable_value(name, value):
    dtype = numerics.numpy_dtype(name)
    v = np.array([value], dtype=dtype)
    # the next larger positive value: one more in the bit pattern
    nxt = (v.view(np.uint16) + 1).view(dtype)
    assert float(numerics.ulp(v.astype(np.float64)[0], name)) == float(nxt[0]) - float(v[0])


def test_vanishing_ratio_matches_rounding():
    for name in ("float16", "bfloat16"):
        dtype = numerics.numpy_dtype(name)
        ratio = numerics.vanishing_ratio(name)
        w = np.array(1.0, dtype=dtype)
        tiny = np.array(1.0 / (ratio * 1.01), dtype=dtype)
        big = np.array(1.0 / (ratio * 0.49), dtype=dtype)
        assert (w + tiny) == w  # lost update
        assert (w + big) != w


def test_is_low_float_recognises_names_and_dtypes():
    assert numerics.is_low_float("float16")
    assert numerics.is_low_float(np.dtype(ml_dtypes.bfloat16))
    assert not numerics.is_low_float("float32")
    assert not numerics.is_low_float(np.int32)


def test_numpy_dtype_knows_bfloat16_and_every_numpy_name():
    assert numerics.numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert numerics.numpy_dtype(np.dtype("int64")) == np.dtype(np.int64)
    assert numerics.numpy_dtype("bool") == np.dtype(bool)
    with pytest.raises(TypeError):
        numerics.numpy_dtype("float8_nonsense")
