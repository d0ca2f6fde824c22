"""A store's current items and its recent changes: what reads and long-polls are served from.

The memory store writes its view directly; the etcd store feeds its view from an etcd watch,
so every replica answers from the same history. ``head`` is the revision of the last change
applied; every change after ``base`` is still in the change log.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    data: dict[str, Any]
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    type: Literal["put", "delete"]
    key: str
    item: Item | None  # the new item of a put; None for a delete
    revision: int


class View:
    def __init__(self, max_changes: int = 10_000) -> None:
        self._items: dict[str, Item] = {}
        self._changes: deque[Change] = deque(maxlen=max_changes)
        self.base = 0
        self.head = 0
        self.closed = False  # no more waiting: the server is stopping
        self._moved = asyncio.Event()

    def reset(self, revision: int, items: Iterable[Item]) -> None:
        """Replace everything with a snapshot taken at ``revision``; history restarts there."""
        self._items = {item.key: item for item in items}
        self._changes.clear()
        self.base = self.head = revision
        self._notify()

    def apply(self, change: Change) -> None:
        if change.revision < self.head:
            return  # already seen (a watch that resumed from an earlier revision)
        if change.type == "put":
            assert change.item is not None
            self._items[change.key] = change.item
        else:
            self._items.pop(change.key, None)
        if len(self._changes) == self._changes.maxlen:
            self.base = self._changes[0].revision
        self._changes.append(change)
        self.head = change.revision
        self._notify()

    def get(self, key: str) -> Item | None:
        return self._items.get(key)

    def items(self, prefix: str = "") -> list[Item]:
        return [item for key, item in self._items.items() if key.startswith(prefix)]

    def changes_after(self, revision: int) -> list[Change] | None:
        """Changes with a revision above ``revision``; None if the log no longer has them all."""
        if revision < self.base:
            return None
        newer: list[Change] = []
        for change in reversed(self._changes):
            if change.revision <= revision:
                break
            newer.append(change)
        newer.reverse()
        return newer

    async def wait_beyond(self, revision: int, timeout_s: float) -> bool:
        """Wait until ``head`` passes ``revision``; False if ``timeout_s`` ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.head <= revision and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):  # wait_for may lose a cancel on 3.11
                    await self._moved.wait()
            except TimeoutError:
                return False
        return self.head > revision

    def close(self) -> None:
        """End every wait now (they return as timed out) and every later one at once."""
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()
