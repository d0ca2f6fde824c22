"""Admission control: at most ``max_inflight`` requests dispatched, ``max_queue`` waiting.

Past the queue a request is refused at once with 429 and a Retry-After, instead of piling
up until every client times out.
"""

from __future__ import annotations

import asyncio
from collections import deque

from pdmaster.errors import Overloaded


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, queue_timeout_s: float) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._queue_timeout_s = queue_timeout_s
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"master overloaded: {self.inflight} running, {len(self._waiters)} queued",
                retry_after_s=1,
                code="queue_full",
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await waiter
        except TimeoutError:
            raise Overloaded(
                f"waited {self._queue_timeout_s:.0f} s in the master's queue",
                retry_after_s=2,
                code="queue_timeout",
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; inflight is unchanged
                return
        self.inflight -= 1
