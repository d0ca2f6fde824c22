"""The in-memory store: one replica, nothing survives a restart but the id counters' floor.

Registrations lapse with the process; masters and agents re-register on their next renewal.
Two things still hold across restarts because they are drawn from the wall clock:

- revisions start at the start time in microseconds, so a watcher's revision from before a
  restart is older than the new history and gets a full snapshot instead of a wrong diff;
- id counters start at the start time in nanoseconds and an allocation is answered only once
  the clock has passed the end of its range, so a restarted server (whose counters start at
  its own start time) never hands out a range again. This caps allocations at one range per
  ``size`` nanoseconds (1,250 ranges/s of 800,000 ids) and assumes the clock never steps back
  across a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from config_server.store.base import INT64_MAX, CounterExhausted, Store
from config_server.store.view import Change, Item, View


class MemoryStore(Store):
    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        sweep_interval_s: float = 0.1,
        max_changes: int = 10_000,
    ) -> None:
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        self._sleep = sleep
        self._sweep_interval_s = sweep_interval_s
        self._started_ns = wall_ns()
        self._revision = self._started_ns // 1000
        self.view = View(max_changes)
        self.view.reset(self._revision, [])
        self._expires: dict[str, float] = {}
        self._counters: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-store-expiry")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    @property
    def ready(self) -> bool:
        return True

    async def put(
        self, key: str, data: dict[str, Any], ttl_s: float, if_mod_revision: int | None = None
    ) -> int:
        old = self.view.get(key)
        if if_mod_revision is not None and if_mod_revision != (old.mod_revision if old else 0):
            return 0
        revision = self._next_revision()
        created = old.create_revision if old is not None else revision
        self._expires[key] = self._monotonic() + ttl_s
        self.view.apply(Change("put", key, Item(key, data, created, revision), revision))
        return revision

    async def delete(self, key: str, if_mod_revision: int | None = None) -> int:
        old = self.view.get(key)
        if old is None or (if_mod_revision is not None and old.mod_revision != if_mod_revision):
            return 0
        return self._remove(key)

    async def allocate(self, counter: str, size: int, floor: int) -> int:
        start = max(self._counters.get(counter, self._started_ns), floor)
        end = start + size
        if end > INT64_MAX:
            raise CounterExhausted(f"id counter {counter!r} would pass 2**63 - 1")
        self._counters[counter] = end
        ahead_ns = end - self._wall_ns()
        if ahead_ns > 0:
            await self._sleep(ahead_ns / 1e9)
        return start

    def expire(self) -> int:
        """Delete every key whose lease has run out; return how many."""
        now = self._monotonic()
        expired = [key for key, deadline in self._expires.items() if deadline <= now]
        for key in expired:
            self._remove(key)
        return len(expired)

    def _remove(self, key: str) -> int:
        self._expires.pop(key, None)
        revision = self._next_revision()
        self.view.apply(Change("delete", key, None, revision))
        return revision

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    async def _sweep_forever(self) -> None:
        while True:
            await self._sleep(self._sweep_interval_s)
            self.expire()
