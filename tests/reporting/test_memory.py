import numpy as np
import pytest

from fp16cont.reporting.memory import METHODS, MemoryBaseline, describe_method, peak_memory_growth, start_peak_memory


def test_peak_rss_sees_an_allocation_and_resets_between_measurements():
    baseline = start_peak_memory()
    if baseline.method != "rss-reset":
        pytest.skip(f"the RSS high-water mark cannot be reset here (method {baseline.method!r})")
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
    first = peak_memory_growth(baseline)
    del block
    second = peak_memory_growth(start_peak_memory())
    assert first.method == "rss-reset" and first.bytes >= 60 * 2**20
    assert second.bytes < 16 * 2**20  # the 64 MiB peak of the first measurement was reset


def test_every_method_is_described_and_unavailable_reads_none():
    assert peak_memory_growth(MemoryBaseline("unavailable", 0)).bytes is None
    for method in METHODS:
        assert describe_method(method) == METHODS[method] and len(METHODS[method]) > 20
    assert start_peak_memory().method in METHODS
