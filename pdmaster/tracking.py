"""Requests in flight, keyed by group request id, and what nodes deliver to them."""

from __future__ import annotations

import asyncio

from pdmaster.errors import DeadlineExceeded
from pdmaster.node_pool import NodeConnection
from pdwire.lightllm import MAX_BEST_OF, TokenEntry, UpKVStatus


class RequestState:
    """Mailbox of one request: token entries from the node it currently listens to."""

    __slots__ = ("group_id", "source", "_items", "_waiter", "_error", "_kv_status", "_kv_waiter")

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.source: NodeConnection | None = None
        self._items: list[TokenEntry] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._kv_status: UpKVStatus | None = None
        self._kv_waiter: asyncio.Future[None] | None = None

    def deliver(self, node: NodeConnection, entry: TokenEntry) -> None:
        if node is not self.source:
            return  # a late token of a node this request no longer listens to
        self._items.append(entry)
        self._wake()

    def kv_arrived(self, status: UpKVStatus) -> None:
        self._kv_status = status
        if self._kv_waiter is not None and not self._kv_waiter.done():
            self._kv_waiter.set_result(None)

    def fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()
        if self._kv_waiter is not None and not self._kv_waiter.done():
            self._kv_waiter.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self, timeout: float, what: str) -> list[TokenEntry]:
        """Every entry delivered so far; waits up to ``timeout`` s for at least one."""
        if not self._items and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                code = what.replace(" ", "_") + "_timeout"
                raise DeadlineExceeded(f"no {what} within {timeout:.1f} s", code=code) from None
            finally:
                self._waiter = None
        if self._items:
            items, self._items = self._items, []
            return items
        assert self._error is not None
        raise self._error

    async def kv_status(self, timeout: float) -> UpKVStatus:
        if self._kv_status is None and self._error is None:
            self._kv_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._kv_waiter
            except TimeoutError:
                raise DeadlineExceeded(
                    f"KV cache hand-off not confirmed within {timeout:.1f} s",
                    code="kv_move_timeout",
                ) from None
            finally:
                self._kv_waiter = None
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
