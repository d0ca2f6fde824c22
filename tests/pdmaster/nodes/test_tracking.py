from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pdmaster.errors import DeadlineExceeded
from pdmaster.nodes.tracking import RequestState, RequestTable
from pdwire.pd_io import TokenEntry
from pdwire.structs import FinishStatus

NODE: Any = object()  # tracking only compares a state's source by identity


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """RequestTable's compiled loops (pdmaster._lane), or its Python ones: the same."""
    flag: bool = request.param
    return flag


def entry(group_id: int, text: str, status: int = 0) -> TokenEntry:
    return (group_id, text, {"id": 1}, FinishStatus(status))


def texts(entries: list[TokenEntry]) -> list[str]:
    return [e[1] for e in entries]


def tracked(table: RequestTable, group_id: int) -> RequestState:
    state = RequestState(group_id)
    state.source = NODE
    table.add(state)
    return state


def test_a_parked_waits_sink_takes_tokens_and_its_task_wakes_for_the_rest(compiled: bool) -> None:
    async def run() -> None:
        ticks = iter(range(100, 200))
        table = RequestTable(lambda: next(ticks), compiled=compiled)
        state = tracked(table, 8)
        taken: list[list[str]] = []
        times: list[float] = []

        def sink(entries: list[TokenEntry], now: float) -> bool:
            if entries[-1][3].status:
                return False
            taken.append(texts(entries))
            times.append(now)
            return True

        waiting = asyncio.ensure_future(state.take(1e9, 60, "token", sink))
        await asyncio.sleep(0)
        table.deliver(NODE, [entry(8, "a")])
        await asyncio.sleep(0)
        table.deliver(NODE, [entry(8, "b")])  # two frames read before the hand-over:
        table.deliver(NODE, [entry(8, "c")])  # one batch for the sink
        await asyncio.sleep(0)
        assert taken == [["a"], ["b", "c"]] and not waiting.done()
        assert times == [100, 101]  # the table's clock, read once per hand-over
        table.deliver(NODE, [entry(8, "d", status=1)])
        assert texts(await waiting) == ["d"]
        assert taken == [["a"], ["b", "c"]]

    asyncio.run(run())


def test_without_a_parked_wait_tokens_queue_for_the_next_take(compiled: bool) -> None:
    async def run() -> None:
        table = RequestTable(compiled=compiled)
        state = tracked(table, 16)
        table.deliver(NODE, [entry(16, "a"), entry(17, "b"), entry(24, "not ours")])
        table.deliver(object(), [entry(16, "from a node it no longer listens to")])
        await asyncio.sleep(0)
        assert texts(await state.take(1e9, 60, "token", lambda _entries, _now: True)) == ["a", "b"]

    asyncio.run(run())


def test_tokens_a_sink_takes_move_the_waits_deadline(compiled: bool) -> None:
    async def run() -> None:
        table = RequestTable(compiled=compiled)
        state = tracked(table, 8)

        def sink(entries: list[TokenEntry], now: float) -> bool:
            state.extend_wait(15.0, 5.0)
            return True

        waiting = asyncio.ensure_future(state.take(10.0, 9.0, "token", sink))
        await asyncio.sleep(0)
        table.deliver(NODE, [entry(8, "a")])
        await asyncio.sleep(0)
        table.expire(12.0)
        await asyncio.sleep(0)
        assert not waiting.done()
        table.expire(15.0)
        with pytest.raises(DeadlineExceeded, match="no token within 5.0 s") as exc:
            await waiting
        assert exc.value.code == "token_timeout"

    asyncio.run(run())


def test_a_failed_request_wakes_its_wait_with_the_error() -> None:
    async def run() -> None:
        state = RequestState(8)
        waiting = asyncio.ensure_future(state.take(1e9, 60, "token", lambda _entries, _now: True))
        await asyncio.sleep(0)
        state.fail(RuntimeError("node left"))
        with pytest.raises(RuntimeError, match="node left"):
            await waiting

    asyncio.run(run())


def test_entries_go_to_the_group_of_their_request_id_as_python_divides(compiled: bool) -> None:
    async def run() -> None:
        table = RequestTable(compiled=compiled)
        ids = [-8, 0, 2**64, 2**70]
        states = {group_id: tracked(table, group_id) for group_id in ids}
        table.deliver(NODE, [entry(-1, "a"), entry(7, "b"), entry(2**64 + 7, "c")])
        table.deliver(NODE, [entry(2**70 + 3, "d"), entry(-8, "e"), entry(99, "nobody's")])
        table.deliver(NODE, (entry(5, "f"),))  # any sequence
        await asyncio.sleep(0)
        got = {g: texts(await s.take(1e9, 60, "token")) for g, s in states.items()}
        assert got == {-8: ["a", "e"], 0: ["b", "f"], 2**64: ["c"], 2**70: ["d"]}

    asyncio.run(run())


def test_a_sink_that_raises_leaves_its_tokens_to_the_waiting_task(
    compiled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a lane both paths call the sink chain in Python; its failure is logged once
    and the tokens it did not take reach the task."""

    async def run() -> None:
        table = RequestTable(compiled=compiled)
        state = tracked(table, 8)

        def sink(entries: list[TokenEntry], now: float) -> bool:
            raise RuntimeError("the client's writer broke")

        waiting = asyncio.ensure_future(state.take(1e9, 60, "token", sink))
        await asyncio.sleep(0)
        table.deliver(NODE, [entry(8, "a"), entry(8, "b")])
        assert texts(await waiting) == ["a", "b"]

    asyncio.run(run())
    failures = [r for r in caplog.records if "token sink failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_a_readers_frames_wait_for_its_hand_over(compiled: bool) -> None:
    """A node's reader queues each frame's tokens and hands them over itself once it has
    read the frames already in: one batch per stream, no loop iteration in between."""

    async def run() -> None:
        table = RequestTable(compiled=compiled)
        state = tracked(table, 8)
        other = tracked(table, 16)
        taken: list[list[str]] = []

        def sink(entries: list[TokenEntry], now: float) -> bool:
            taken.append(texts(entries))
            return True

        waiting = asyncio.ensure_future(state.take(1e9, 60, "token", sink))
        await asyncio.sleep(0)
        queue = table.queue(NODE)
        queue([entry(8, "a"), entry(16, "x")])
        queue([entry(8, "b"), entry(24, "nobody's")])
        await asyncio.sleep(0)
        assert taken == []  # nothing until the reader says so
        table.hand_over()
        assert taken == [["a", "b"]]
        table.hand_over()  # nothing new: nothing to give
        assert taken == [["a", "b"]] and not waiting.done()
        assert texts(await other.take(1e9, 60, "token")) == ["x"]
        waiting.cancel()

    asyncio.run(run())
