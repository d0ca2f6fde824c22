"""Requests in flight, keyed by group request id, and what nodes deliver to them.

Waits carry an absolute deadline that one periodic sweep (``RequestTable.expire``) enforces,
instead of a timer per wait: a stream waits once per token, so per-wait timers would be the
largest cost of relaying a token.
"""

from __future__ import annotations

import asyncio

from pdmaster.errors import DeadlineExceeded
from pdmaster.node_pool import NodeConnection
from pdwire.lightllm import MAX_BEST_OF, TokenEntry, UpKVStatus

KV_WAIT = ("KV cache hand-off confirmation", "kv_move_timeout")


class RequestState:
    """Mailbox of one request: token entries from the node it listens to, and its KV status."""

    __slots__ = (
        "group_id",
        "source",
        "_items",
        "_error",
        "_kv_status",
        "_waiter",
        "_deadline",
        "_waiting",
    )

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.source: NodeConnection | None = None
        self._items: list[TokenEntry] = []
        self._error: Exception | None = None
        self._kv_status: UpKVStatus | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._waiting: tuple[str, str, float] = ("", "", 0.0)

    def deliver(self, node: NodeConnection, entry: TokenEntry) -> None:
        if node is not self.source:
            return  # a late token of a node this request no longer listens to
        self._items.append(entry)
        self._wake()

    def kv_arrived(self, status: UpKVStatus) -> None:
        self._kv_status = status
        self._wake()

    def fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def expire(self, now: float) -> None:
        waiter = self._waiter
        if waiter is not None and now >= self._deadline and not waiter.done():
            what, code, seconds = self._waiting
            waiter.set_exception(DeadlineExceeded(f"no {what} within {seconds:.1f} s", code=code))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, deadline: float, seconds: float, what: str, code: str) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        self._deadline = deadline
        self._waiting = (what, code, seconds)
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def take(self, deadline: float, seconds: float, what: str) -> list[TokenEntry]:
        """Every entry delivered so far; waits until ``deadline`` for at least one."""
        while not self._items and self._error is None:
            await self._wait(deadline, seconds, what, what.replace(" ", "_") + "_timeout")
        if self._items:
            items, self._items = self._items, []
            return items
        assert self._error is not None
        raise self._error

    async def kv_status(self, deadline: float, seconds: float) -> UpKVStatus:
        while self._kv_status is None and self._error is None:
            await self._wait(deadline, seconds, *KV_WAIT)
        if self._error is not None:
            raise self._error
        assert self._kv_status is not None
        return self._kv_status


class RequestTable:
    def __init__(self) -> None:
        self._by_group: dict[int, RequestState] = {}

    def add(self, state: RequestState) -> None:
        self._by_group[state.group_id] = state

    def remove(self, state: RequestState) -> None:
        if self._by_group.get(state.group_id) is state:
            del self._by_group[state.group_id]

    def __len__(self) -> int:
        return len(self._by_group)

    def deliver(self, node: NodeConnection, entries: list[TokenEntry]) -> None:
        table = self._by_group
        for entry in entries:
            state = table.get(entry[0] // MAX_BEST_OF * MAX_BEST_OF)
            if state is not None:
                state.deliver(node, entry)

    def kv_arrived(self, status: UpKVStatus) -> None:
        state = self._by_group.get(status.group_request_id)
        if state is not None:
            state.kv_arrived(status)

    def expire(self, now: float) -> None:
        """Fail every wait whose deadline has passed."""
        for state in list(self._by_group.values()):
            state.expire(now)
