"""How much memory a compiled function's repeated calls keep: the leak checks of the C tests."""

from __future__ import annotations

import gc
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
