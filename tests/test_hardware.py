import warnings

import keras
import pytest

from fp16cont import hardware
from fp16cont.errors import InvalidArgumentError, PerformanceWarning
from fp16cont.hardware import Device, select_precision

AMPERE = Device(kind="gpu", name="A100", compute_capability=(8, 0))
PASCAL = Device(kind="gpu", name="P100", compute_capability=(6, 0))
BF16_CPU = Device(kind="cpu", name="Sapphire Rapids", cpu_bf16=True)
OLD_CPU = Device(kind="cpu", name="old CPU", cpu_bf16=False)
TPU = Device(kind="tpu", name="TPU v4")


@pytest.mark.parametrize(
    "device,expected,fast",
    [(AMPERE, "float16", True), (PASCAL, "float16", False), (BF16_CPU, "bfloat16", True),
     (OLD_CPU, "bfloat16", False), (TPU, "bfloat16", True)],
)
def test_auto_picks_the_fast_format(device, expected, fast):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        choice = select_precision("auto", device)
    assert (choice.precision, choice.fast) == (expected, fast)


def test_explicit_float16_on_cpu_warns_once_with_measured_reason():
    device = Device(kind="cpu", name="warn-once-cpu", cpu_bf16=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_precision("float16", device).precision == "float16"
        select_precision("float16", device)
    perf = [w for w in caught if issubclass(w.category, PerformanceWarning)]
    assert len(perf) == 1
    assert "0.93 img/s" in str(perf[0].message)


def test_explicit_bfloat16_on_a_cpu_without_bfloat16_instructions_says_why_it_warns():
    device = Device(kind="cpu", name="no-bf16-cpu", cpu_bf16=False)
    with pytest.warns(PerformanceWarning, match="no-bf16-cpu has no bfloat16 instructions"):
        choice = select_precision("bfloat16", device)
    assert (choice.precision, choice.fast) == ("bfloat16", False)
    quiet = Device(kind="cpu", name="amx-cpu", cpu_bf16=True)
    assert select_precision("bfloat16", quiet).reason == "bfloat16: requested explicitly"


def test_explicit_bfloat16_on_gpu_is_honoured():
    assert select_precision("bfloat16", AMPERE).precision == "bfloat16"


@pytest.mark.parametrize("bad", ["float8", "fp16", "", None, 16])
def test_unknown_precision_is_a_typed_error(bad):
    with pytest.raises(InvalidArgumentError, match="precision"):
        select_precision(bad, BF16_CPU)


def test_detect_device_on_this_backend():
    device = hardware.detect_device()
    assert device.kind in ("cpu", "gpu", "tpu")
    if keras.backend.backend() == "tensorflow" and device.kind == "cpu":
        assert isinstance(device.cpu_bf16, bool)


def test_every_error_class_is_exported():
    import fp16cont
    from fp16cont import errors

    classes = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, (Exception, Warning))
               and v.__module__ == errors.__name__}
    assert classes == set(errors.__all__)
    assert classes <= set(fp16cont.__all__)
