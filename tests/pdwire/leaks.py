"""How much memory a compiled function's repeated calls keep: the leak checks of the C tests."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def memory_growth(run: Callable[[int], None], warm: int, rounds: int) -> tuple[int, int]:
    """Bytes Python's allocator and the process's RSS grew by over ``run(rounds)``, measured
    after ``run(warm)`` (caches, free lists and interned values settle in the warm-up)."""
    tracemalloc.start()
    try:
        run(warm)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        rss_before = rss_bytes()
        run(rounds)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, rss_bytes() - rss_before
    finally:
        tracemalloc.stop()


def assert_keeps_nothing(
    run: Callable[[int], None], watched: list[object], warm: int, rounds: int
) -> None:
    """``run(rounds)`` leaves every watched object's reference count as it was, and grows
    neither Python's allocator by 64 KB nor the RSS by 8 MB."""
    run(warm)
    gc.collect()
    counts = [sys.getrefcount(v) for v in watched]
    grown, rss_grown = memory_growth(run, warm, rounds)
    assert [sys.getrefcount(v) for v in watched] == counts
    assert grown < 64 * 1024, grown
    assert rss_grown < 8 * 2**20, rss_grown
