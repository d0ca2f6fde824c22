from __future__ import annotations

import asyncio

import pytest

from pdmaster.errors import Overloaded
from pdmaster.routing.admission import Admission


def test_requests_past_the_queue_get_429_at_once() -> None:
    async def run() -> None:
        admission = Admission(max_inflight=2, max_queue=1, queue_timeout_s=5)
        await admission.acquire()
        await admission.acquire()
        queued = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert admission.queued == 1
        with pytest.raises(Overloaded) as refused:
            await admission.acquire()
        assert refused.value.status == 429 and refused.value.retry_after_s >= 1
        admission.release()
        await queued  # the freed slot went to the queued request
        assert (admission.inflight, admission.queued) == (2, 0)

    asyncio.run(run())


def test_queue_wait_has_a_deadline() -> None:
    async def run() -> None:
        admission = Admission(max_inflight=1, max_queue=5, queue_timeout_s=0.05)
        await admission.acquire()
        with pytest.raises(Overloaded, match="queue"):
            await admission.acquire()
        assert admission.queued == 0

    asyncio.run(run())


def test_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    async def run() -> None:
        admission = Admission(max_inflight=1, max_queue=5, queue_timeout_s=5)
        await admission.acquire()
        waiter = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        admission.release()  # hands the slot to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(waiter, return_exceptions=True)
        assert admission.inflight == 0
        await admission.acquire()
        assert admission.inflight == 1

    asyncio.run(run())
