"""Hardware detection and the choice of 16-bit format.

This is the only module that asks the active Keras backend (TensorFlow,
JAX or torch) which devices it has. The rest of fp16cont calls :func:`select_precision`.

Measured on a Sapphire Rapids CPU with TensorFlow 2.21: ResNet-20 trains at
232 img/s in float32, 0.93 img/s in float16 and 220 img/s in bfloat16, so
float16 is only chosen on GPUs with fast half-precision units.

Example:
    >>> from fp16cont import hardware
    >>> hardware.select_precision("bfloat16").precision
    'bfloat16'
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import keras

from fp16cont.errors import InvalidArgumentError, PerformanceWarning
from fp16cont.numerics import LOW_PRECISIONS, LowPrecision
from fp16cont.reporting.results import Device, PrecisionChoice

__all__ = ["Device", "PrecisionChoice", "detect_device", "select_precision", "CPU_FLOAT16_REASON", "collective_strategy_active"]

CPU_FLOAT16_REASON = (
    "float16 has no fast kernels on CPUs: measured with TensorFlow 2.21, "
    "ResNet-20 trains at 0.93 img/s in float16 against 232 img/s in float32 "
    "(about 250x slower) and 220 img/s in bfloat16. Use precision='bfloat16' "
    "(or 'auto') on CPUs."
)
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_WARNED: set[str] = set()  # each slow-precision warning is shown once per process


@functools.cache
def detect_device() -> Device:
    """Describe the first accelerator of the active Keras backend.

    Returns:
        A :class:`Device`; the CPU when no GPU or TPU is visible.

    Example:
        >>> detect_device().kind in ("cpu", "gpu", "tpu")
        True
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        accelerator = _tensorflow_accelerator()
    elif backend == "jax":
        accelerator = _jax_accelerator()
    elif backend == "torch":
        accelerator = _torch_accelerator()
    else:
        accelerator = None
    return accelerator or Device(kind="cpu", name=_cpu_name(), cpu_bf16=_cpu_has_bf16())


def select_precision(precision: str = "auto", device: Device | None = None, warn: bool = True) -> PrecisionChoice:
    """Resolve ``"auto"`` (or check an explicit format) for a device.

    ``"auto"`` picks float16 on CUDA GPUs of compute capability 7.0 or more,
    bfloat16 on TPUs and on CPUs with bfloat16 instructions, and otherwise
    bfloat16 with a warning that no speed-up is expected. An explicit
    ``"float16"`` on a CPU is honoured but warns with the measured reason.

    Args:
        precision: ``"auto"``, ``"float16"`` or ``"bfloat16"``.
        device: The device to decide for; :func:`detect_device` by default.
        warn: Emit a :class:`PerformanceWarning` (once per process and reason)
            when no speed-up is expected.

    Returns:
        The :class:`PrecisionChoice`.

    Raises:
        InvalidArgumentError: If ``precision`` is not one of the three names.

    Example:
        >>> cpu = Device(kind="cpu", name="test", cpu_bf16=True)
        >>> select_precision("auto", cpu).precision
        'bfloat16'
    """
    if precision not in ("auto", *LOW_PRECISIONS):
        raise InvalidArgumentError(
            f"Argument `precision` should be 'auto', 'float16' or 'bfloat16'. "
            f"Received: precision={precision!r}. Fix: pass precision='auto' to let "
            "fp16cont pick the fast 16-bit format for this hardware."
        )
    device = device or detect_device()
    choice = _auto_choice(device) if precision == "auto" else _explicit_choice(precision, device)
    if warn and not choice.fast and choice.reason not in _WARNED:
        _WARNED.add(choice.reason)
        warnings.warn(choice.reason, PerformanceWarning, stacklevel=3)
    return choice


def _auto_choice(device: Device) -> PrecisionChoice:
    if device.kind == "gpu" and device.compute_capability and device.compute_capability >= (7, 0):
        return PrecisionChoice("float16", f"float16: {device.name} has tensor cores", True)
    if device.kind == "gpu":
        return PrecisionChoice(
            "float16",
            f"float16: {device.name} (compute capability {device.compute_capability}) has "
            "no tensor cores, so no speed-up over float32 is expected",
            False,
        )
    if device.kind == "tpu":
        return PrecisionChoice("bfloat16", "bfloat16: TPUs compute natively in bfloat16", True)
    if device.cpu_bf16:
        return PrecisionChoice("bfloat16", f"bfloat16: {device.name} has AMX/AVX512-BF16", True)
    return PrecisionChoice(
        "bfloat16",
        f"bfloat16: {device.name} has no bfloat16 instructions, so 16-bit training "
        "halves memory but is not expected to be faster than float32",
        False,
    )


def _explicit_choice(precision: LowPrecision, device: Device) -> PrecisionChoice:
    if precision == "float16" and device.kind in ("cpu", "tpu"):
        return PrecisionChoice("float16", f"float16 on {device.name}: {CPU_FLOAT16_REASON}", False)
    fast = _auto_choice(device)
    if fast.fast:
        return PrecisionChoice(precision, f"{precision}: requested explicitly", True)
    why = fast.reason.split(": ", 1)[-1]  # the device's reason, without the format auto would name
    return PrecisionChoice(precision, f"{precision} (requested explicitly): {why}", False)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_has_bf16() -> bool:
    return any(flag in _cpu_flags() for flag in _BF16_CPU_FLAGS)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def _tensorflow_accelerator() -> Device | None:
    import tensorflow as tf

    if tf.config.list_physical_devices("TPU"):
        return Device(kind="tpu", name="TPU")
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return Device(
        kind="gpu",
        name=str(details.get("device_name", "GPU")),
        compute_capability=tuple(capability) if capability else None,
    )


def _jax_accelerator() -> Device | None:
    import jax

    device = jax.devices()[0]
    if device.platform == "tpu":
        return Device(kind="tpu", name=str(device.device_kind))
    if device.platform != "gpu":
        return None
    raw = getattr(device, "compute_capability", None)
    capability = tuple(int(p) for p in str(raw).split(".")[:2]) if raw else None
    return Device(kind="gpu", name=str(device.device_kind), compute_capability=capability)


def _torch_accelerator() -> Device | None:
    import torch

    from fp16cont import _keras_compat as compat

    device = compat.torch_device()
    if torch.cuda.is_available() and device.startswith("cuda"):  # where Keras trains, not just what exists
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return Device(
            kind="gpu",
            name=str(torch.cuda.get_device_name(index)),
            compute_capability=tuple(int(p) for p in torch.cuda.get_device_capability(index)),
        )
    return None


def collective_strategy_active() -> bool:
    """Whether a TensorFlow multi-worker (collective) strategy is in scope.

    Its collective broadcast has no bfloat16 kernel, so bfloat16 variables
    cannot be created under it.

    Returns:
        ``True`` inside ``tf.distribute.MultiWorkerMirroredStrategy().scope()``.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and isinstance(
        tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy
    )
