"""Peak memory of a stretch of work: GPU memory where the backend reports it, else RSS.

Call :func:`start_peak_memory` before the work and :func:`peak_memory_growth`
after it. What is measured depends on where Keras runs:

- ``"tensorflow-gpu"``: TensorFlow's peak GPU memory allocated on ``GPU:0``
  during the work (its peak counter is reset at the start), minus what was
  allocated at the start.
- ``"jax-gpu"``: JAX's ``peak_bytes_in_use`` on the first device minus the
  bytes in use at the start. JAX cannot reset its peak, so a stretch that
  stays below an earlier peak cannot be measured and reads ``None``.
- ``"rss-reset"`` (Linux): growth of the process's peak resident set size
  (``resource.getrusage``) after the kernel's high-water mark was reset to
  the current RSS (``/proc/self/clear_refs``): the most extra host memory the
  process held at any moment during the work.
- ``"rss"``: growth of the process's lifetime peak RSS (``resource.getrusage``),
  where the high-water mark cannot be reset: a stretch that stays below an
  earlier peak of the process reads 0.

This is the only module that asks a backend about memory.

Example:
    >>> baseline = start_peak_memory()
    >>> block = bytearray(64 * 2**20)
    >>> peak = peak_memory_growth(baseline)
    >>> peak.method in METHODS
    True
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras

from fp16cont.hardware import detect_device
from fp16cont.reporting.results import MemoryBaseline, PeakMemory

__all__ = ["METHODS", "MemoryBaseline", "PeakMemory", "start_peak_memory", "peak_memory_growth", "describe_method"]

METHODS: dict[str, str] = {
    "tensorflow-gpu": "peak GPU memory allocated by TensorFlow on GPU:0 during training, above the "
    "amount allocated when training started",
    "jax-gpu": "peak GPU memory in use on the first device during training (JAX's "
    "peak_bytes_in_use), above the amount in use when training started; JAX cannot reset its "
    "peak, so a run that stays below an earlier peak of the process reads n/a",
    "rss-reset": "peak resident set size of the process during training (resource.getrusage, "
    "high-water mark reset before each run), above the RSS when training started",
    "rss": "growth of the process's lifetime peak resident set size (resource.getrusage) during "
    "training: a run that stays below an earlier peak of the process reads 0",
    "unavailable": "no memory measurement on this platform",
    "off": "not measured (compare(..., measure_memory=True) measures it)",
}


def start_peak_memory() -> MemoryBaseline:
    """Start a peak-memory measurement (resetting the peak counter where possible).

    Returns:
        The :class:`MemoryBaseline` to hand to :func:`peak_memory_growth`.

    Example:
        >>> start_peak_memory().start_bytes >= 0
        True
    """
    if detect_device().kind == "gpu":
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")
            return MemoryBaseline("tensorflow-gpu", int(tf.config.experimental.get_memory_info("GPU:0")["current"]))
        if backend == "jax":
            stats = _jax_stats()
            if stats is not None and "peak_bytes_in_use" in stats:
                return MemoryBaseline("jax-gpu", int(stats["bytes_in_use"]), int(stats["peak_bytes_in_use"]))
    reset = _reset_rss_peak()
    peak = _max_rss_bytes()
    if peak is None:
        return MemoryBaseline("unavailable", 0)
    current = _current_rss_bytes()
    effective = reset and current is not None and peak <= current + _RESET_SLACK
    return MemoryBaseline("rss-reset" if effective else "rss", peak)


def peak_memory_growth(baseline: MemoryBaseline) -> PeakMemory:
    """How far the peak rose above the baseline.

    Args:
        baseline: The result of :func:`start_peak_memory`.

    Returns:
        A :class:`PeakMemory` (``bytes`` is never negative; ``None`` when the
        backend cannot tell).

    Example:
        >>> peak_memory_growth(MemoryBaseline("unavailable", 0)).bytes is None
        True
    """
    method = baseline.method
    if method == "tensorflow-gpu":
        import tensorflow as tf

        peak: int | None = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    elif method == "jax-gpu":
        stats = _jax_stats()
        peak = int(stats["peak_bytes_in_use"]) if stats is not None else None
        if peak is not None and peak <= baseline.start_peak_bytes:
            peak = None  # below an earlier peak: JAX cannot tell this stretch's own peak
    elif method in ("rss", "rss-reset"):
        peak = _max_rss_bytes()
    else:
        peak = None
    return PeakMemory(None if peak is None else max(0, peak - baseline.start_bytes), method)


def describe_method(method: str) -> str:
    """One sentence saying what a measurement of ``method`` means.

    Args:
        method: A key of :data:`METHODS`.

    Returns:
        The description (the method itself for unknown keys).

    Example:
        >>> describe_method("unavailable")
        'no memory measurement on this platform'
    """
    return METHODS.get(method, method)


def _jax_stats() -> dict[str, int] | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return dict(stats) if stats else None


_RESET_SLACK = 4 * 2**20  # pages touched between the reset and the two reads


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _current_rss_bytes() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def _max_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere
