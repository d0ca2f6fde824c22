"""Requests in flight, keyed by group request id, and what nodes deliver to them.

Waits carry an absolute deadline that one periodic sweep (``RequestTable.expire``) enforces,
instead of a timer per wait: a stream waits once per token, so per-wait timers would be the
largest cost of relaying a token. A wait may also name a sink: while it waits, tokens go
straight to the sink from the node's reader, and the waiting task wakes only for what the
sink declines (a stream's last token, an error, a client that is not reading).

Where the extension ``pdmaster._lane`` is built, a hand-over is one compiled call: a wait
may also name a ``Lane`` (a stream's relay state, see hot_path), and for each request whose
stream is in the plain case the compiled call does what the sink chain would (the same
bytes, metrics and deadlines); anything else takes the sink chain, the reference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pdmaster.errors import DeadlineExceeded
from pdmaster.nodes.pool import NodeConnection
from pdwire.extensions import optional_extension
from pdwire.pd_io import MAX_BEST_OF, TokenEntry, UpKVStatus

log = logging.getLogger(__name__)

KV_WAIT = ("KV cache hand-off confirmation", "kv_move_timeout")
PROMPT_IDS_WAIT = ("prompt ids from the prefill node", "prompt_ids_timeout")

Sink = Callable[[list[TokenEntry], float], bool]
"""Takes tokens while a wait is parked, with the time they were handed over (one clock read
per hand-over, not one per stream); False leaves them to the waiting task."""


class RequestState:
    """Mailbox of one request: token entries from the node it listens to, and its KV status."""

    __slots__ = (
        "group_id",
        "source",
        "kv_host",
        "uploader",
        "_prompt_ids",
        "_items",
        "_error",
        "_kv_status",
        "_waiter",
        "_sink",
        "_lane",
        "_deadline",
        "_seconds",
        "_waiting",
    )

    def __init__(self, group_id: int) -> None:
        self.group_id = group_id
        self.source: NodeConnection | None = None
        self.kv_host: str | None = None  # the decode node's address: the one that confirms KV
        self.uploader: NodeConnection | None = None  # v1.2.0: the P whose prompt ids count
        self._prompt_ids: list[int] | None = None
        self._items: list[TokenEntry] = []
        self._error: Exception | None = None
        self._kv_status: UpKVStatus | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._lane: object | None = None  # read by pdmaster._lane's hand_over
        self._deadline = 0.0
        self._seconds = 0.0
        self._waiting: tuple[str, str] = ("", "")

    def ready(self, now: float) -> None:
        """Tokens were queued (handed over at ``now``): give them to the parked wait's sink,
        or wake the wait."""
        waiter, sink = self._waiter, self._sink
        if waiter is None or waiter.done():
            return
        if sink is not None and self._error is None:
            items, self._items = self._items, []
            try:
                if sink(items, now):
                    return
            except Exception as exc:  # the waiting task meets it again on its own way
                self._items = items
                self._sink_failed(exc)
                return
            self._items = items
        waiter.set_result(None)

    def _sink_failed(self, exc: BaseException) -> None:
        """A sink raised (here or in the compiled relay): the waiting task takes the tokens."""
        log.error("group %d: token sink failed", self.group_id, exc_info=exc)
        self._wake()

    def extend_wait(self, deadline: float, seconds: float) -> None:
        """Move the parked wait's deadline (a sink took tokens, so the node is alive)."""
        self._deadline = deadline
        self._seconds = seconds

    def kv_arrived(self, status: Any) -> None:
        self._kv_status = status
        self._wake()

    def prompt_ids_arrived(self, node: NodeConnection, prompt_ids: list[int]) -> None:
        if node is self.uploader and self._prompt_ids is None:
            self._prompt_ids = prompt_ids
            self._wake()

    def fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def expire(self, now: float) -> None:
        waiter = self._waiter
        if waiter is not None and now >= self._deadline and not waiter.done():
            what, code = self._waiting
            message = f"no {what} within {self._seconds:.1f} s"
            waiter.set_exception(DeadlineExceeded(message, code=code))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(
        self,
        deadline: float,
        seconds: float,
        what: str,
        code: str,
        sink: Sink | None = None,
        lane: object | None = None,
    ) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        self._sink = sink
        self._lane = lane if sink is not None else None
        self._deadline = deadline
        self._seconds = seconds
        self._waiting = (what, code)
        try:
            await self._waiter
        finally:
            self._waiter = self._sink = self._lane = None

    async def take(
        self,
        deadline: float,
        seconds: float,
        what: str,
        sink: Sink | None = None,
        lane: object | None = None,
    ) -> list[TokenEntry]:
        """Every entry delivered so far; waits until ``deadline`` for at least one.

        While it waits, ``sink`` is offered each batch first; what it takes is not returned.
        ``lane`` (with a sink): the compiled relay of that sink chain, for the plain case.
        """
        while not self._items and self._error is None:
            code = what.replace(" ", "_") + "_timeout"
            await self._wait(deadline, seconds, what, code, sink, lane)
        if self._items:
            items, self._items = self._items, []
            return items
        assert self._error is not None
        raise self._error

    async def kv_status(self, deadline: float, seconds: float) -> Any:
        """v1.1.0: an ``UpKVStatus``; v1.2.0: a ``PDUpKVStatus``."""
        while self._kv_status is None and self._error is None:
            await self._wait(deadline, seconds, *KV_WAIT)
        if self._error is not None:
            raise self._error
        assert self._kv_status is not None
        return self._kv_status

    async def prompt_ids(self, deadline: float, seconds: float) -> list[int]:
        while self._prompt_ids is None and self._error is None:
            await self._wait(deadline, seconds, *PROMPT_IDS_WAIT)
        if self._error is not None:
            raise self._error
        assert self._prompt_ids is not None
        return self._prompt_ids


class RequestTable:
    """``compiled=False``: every hand-over takes the sink chains in Python, as where the
    extension is not built (tests compare the two paths)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, compiled: bool = True) -> None:
        self._clock = clock
        self._by_group: dict[int, RequestState] = {}
        self._ready: list[RequestState] = []
        module = optional_extension("pdmaster._lane") if compiled else None
        # a build older than this tree (not rebuilt after a merge) lacks a part: none is used
        parts = [getattr(module, name, None) for name in ("hand_over", "deliver", "Lane")]
        if None in parts:
            parts = [None, None, None]
        self._compiled: Callable[[list[RequestState], float], tuple[int, int]] | None = parts[0]
        self._deliver: Callable[..., None] | None = parts[1]
        self.lane_type: Callable[..., object] | None = parts[2]
        """The compiled relay state of one stream, where hand-overs are compiled."""
        self.relayed = 0  # hand-overs to a stream done by the compiled call
        self.declined = 0  # ... with a lane armed, left to the sink chain

    def add(self, state: RequestState) -> None:
        self._by_group[state.group_id] = state

    def remove(self, state: RequestState) -> None:
        if self._by_group.get(state.group_id) is state:
            del self._by_group[state.group_id]

    def __len__(self) -> int:
        return len(self._by_group)

    def deliver(self, node: NodeConnection, entries: list[TokenEntry]) -> None:
        """Queue each entry for its request; ``hand_over`` gives them out soon after (once
        the loop has run what else is ready: frames read meanwhile go in the same batch)."""
        idle = not self._ready
        self.queue(node)(entries)
        if idle and self._ready:
            asyncio.get_running_loop().call_soon(self.hand_over)

    def queue(self, node: Any) -> Callable[[list[TokenEntry]], None]:
        """``deliver(node, entries)`` for a node's reader, which calls it per frame, without
        the hand-over: the reader calls ``hand_over`` once it has read the frames already in,
        so a stream that fell behind gets its tokens in one write instead of one per frame."""
        table = self._by_group
        compiled = self._deliver

        def queue(entries: list[TokenEntry]) -> None:
            ready = self._ready
            if compiled is not None:  # this loop, compiled
                compiled(table, ready, node, entries, MAX_BEST_OF)
                return
            for entry in entries:  # per token, so inline; a late token of a node the request
                state = table.get(entry[0] // MAX_BEST_OF * MAX_BEST_OF)  # left is dropped
                if state is not None and state.source is node:
                    items = state._items
                    items.append(entry)
                    if len(items) == 1:
                        ready.append(state)

        return queue

    def hand_over(self) -> None:
        """Give each request what was queued for it, all at once."""
        ready = self._ready
        if not ready:
            return
        self._ready = []
        now = self._clock()
        if self._compiled is not None:
            relayed, declined = self._compiled(ready, now)
            self.relayed += relayed
            self.declined += declined
            return
        for state in ready:
            state.ready(now)

    def kv_arrived(self, status: UpKVStatus, peer_host: str) -> bool:
        """Give a KV hand-off status to its request; False if ``peer_host`` is not the
        address of the decode node the request was sent to (group ids are guessable)."""
        state = self._by_group.get(status.group_request_id)
        if state is None:
            return True  # late: its request is gone
        if state.kv_host != peer_host:
            return False
        state.kv_arrived(status)
        return True

    def kv_reserved(self, group_request_id: int, info: Any, peer_host: str) -> bool:
        """v1.2.0: D admitted the request and says where P must write its KV cache (D's
        ``PDDecodeNodeInfo``); False if ``peer_host`` is not that request's decode node."""
        state = self._by_group.get(group_request_id // MAX_BEST_OF * MAX_BEST_OF)
        if state is None:
            return True  # late: its request is gone
        if state.kv_host != peer_host:
            return False
        state.kv_arrived(info)
        return True

    def prompt_ids_arrived(self, node: NodeConnection, group_id: int, ids: list[int]) -> None:
        state = self._by_group.get(group_id // MAX_BEST_OF * MAX_BEST_OF)
        if state is not None:
            state.prompt_ids_arrived(node, ids)

    def expire(self, now: float) -> None:
        """Fail every wait whose deadline has passed."""
        for state in list(self._by_group.values()):
            state.expire(now)
