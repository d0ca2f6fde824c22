"""The memory store and the view, in process with injected clocks."""

from __future__ import annotations

import asyncio

import pytest

from config_server.store.base import CounterExhausted
from config_server.store.memory import MemoryStore
from config_server.store.view import Change, Item, View

START_NS = 1_800_000_000_000_000_000


class FakeClocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall_ns = START_NS
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall_ns += int(seconds * 1e9) + 1


def store(clocks: FakeClocks, **kwargs: int) -> MemoryStore:
    return MemoryStore(
        monotonic=lambda: clocks.mono,
        wall_ns=lambda: clocks.wall_ns,
        sleep=clocks.sleep,
        **kwargs,
    )


def test_revisions_start_at_the_start_time_in_microseconds() -> None:
    clocks = FakeClocks()
    s = store(clocks)
    assert s.view.head == s.view.base == START_NS // 1000
    assert asyncio.run(s.put("node/a", {"x": 1}, 10)) == START_NS // 1000 + 1


def test_a_lease_lapses_at_its_ttl_and_a_renewal_extends_it() -> None:
    clocks = FakeClocks()
    s = store(clocks)

    async def scenario() -> None:
        first = await s.put("node/a", {"v": 1}, 5)
        clocks.mono += 4
        assert s.expire() == 0
        await s.put("node/a", {"v": 2}, 5)  # renewal
        clocks.mono += 4
        assert s.expire() == 0
        item = s.view.get("node/a")
        assert item is not None and item.data == {"v": 2} and item.create_revision == first
        clocks.mono += 1
        assert s.expire() == 1
        assert s.view.get("node/a") is None

    asyncio.run(scenario())
    assert [c.type for c in s.view.changes_after(START_NS // 1000) or []] == [
        "put",
        "put",
        "delete",
    ]


def test_conditional_put_and_delete_only_over_the_expected_revision() -> None:
    s = store(FakeClocks())

    async def scenario() -> None:
        assert await s.put("master/1", {"v": 1}, 10, if_mod_revision=5) == 0  # absent, not 5
        created = await s.put("master/1", {"v": 1}, 10, if_mod_revision=0)
        assert created
        assert await s.put("master/1", {"v": 2}, 10, if_mod_revision=0) == 0
        assert await s.delete("master/1", if_mod_revision=created - 1) == 0
        assert await s.delete("master/1", if_mod_revision=created) > created
        assert await s.delete("master/1") == 0

    asyncio.run(scenario())


def test_ranges_start_at_the_clock_and_wait_until_it_passes_their_end() -> None:
    clocks = FakeClocks()
    s = store(clocks)

    async def scenario() -> list[int]:
        return [await s.allocate("ids", 800_000, 0) for _ in range(3)]

    starts = asyncio.run(scenario())
    assert starts == [START_NS, START_NS + 800_000, START_NS + 1_600_000]
    assert all(pause == pytest.approx(0.0008, abs=1e-6) for pause in clocks.slept[:1])
    # A restarted store starts its counters at its own start time: past every issued range.
    assert clocks.wall_ns >= START_NS + 2_400_000
    restarted = store(clocks)
    assert asyncio.run(restarted.allocate("ids", 800_000, 0)) >= START_NS + 2_400_000


def test_a_counter_never_passes_int64() -> None:
    clocks = FakeClocks()
    s = store(clocks)
    with pytest.raises(CounterExhausted):
        asyncio.run(s.allocate("ids", 2**63, 0))


def test_the_view_drops_old_changes_and_says_so() -> None:
    view = View(max_changes=3)
    view.reset(10, [])
    for revision in range(11, 16):
        item = Item(f"node/{revision}", {}, revision, revision)
        view.apply(Change("put", item.key, item, revision))
    assert view.head == 15 and view.base == 12
    assert view.changes_after(11) is None  # 12 was dropped: the caller needs a snapshot
    assert [c.revision for c in view.changes_after(12) or []] == [13, 14, 15]
    assert view.changes_after(15) == []


def test_waiting_on_the_view_wakes_on_a_change_and_times_out_otherwise() -> None:
    async def scenario() -> tuple[bool, bool]:
        view = View()
        view.reset(1, [])
        waiter = asyncio.create_task(view.wait_beyond(1, 5.0))
        await asyncio.sleep(0)
        view.apply(Change("delete", "node/x", None, 2))
        woke = await waiter
        timed_out = await view.wait_beyond(2, 0.01)
        return woke, timed_out

    assert asyncio.run(scenario()) == (True, False)
