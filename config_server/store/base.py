"""What the registry needs from a store, and the errors a store raises.

A store keeps JSON objects under keys (``master/<id>``, ``node/<id>``), each with a lease
that deletes it when not renewed within its TTL, numbers every change with a growing
revision, and hands out id ranges from counters that never go back. Reads come from the
store's ``View`` (see ``view.py``); writes go through the store.

StoreError
+-- StoreUnavailable   the backing service cannot be reached (answer 503, retry later)
+-- CounterExhausted   an id counter would pass 2**63 - 1
"""

from __future__ import annotations

import abc
from typing import Any

from config_server.store.view import View

INT64_MAX = 2**63 - 1


class StoreError(Exception):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The store's backend is unreachable or not loaded yet."""


class CounterExhausted(StoreError):
    """An id counter reached the end of the int64 range."""


class Store(abc.ABC):
    """Leased JSON objects with a change feed, and monotonic id counters."""

    view: View

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections and start background work (expiry, watch)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and close connections."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True when reads reflect the backend and writes can be attempted."""

    @abc.abstractmethod
    async def put(
        self, key: str, data: dict[str, Any], ttl_s: float, if_mod_revision: int | None = None
    ) -> int:
        """Create or replace ``key``, (re)starting its lease; return the change's revision.

        With ``if_mod_revision``, only if ``key`` was last changed at that revision (0: only
        if it does not exist); return 0 when it was not.
        """

    @abc.abstractmethod
    async def delete(self, key: str, if_mod_revision: int | None = None) -> int:
        """Delete ``key`` (only if last changed at ``if_mod_revision`` when given).

        Return the deletion's revision, or 0 when nothing was deleted.
        """

    @abc.abstractmethod
    async def allocate(self, counter: str, size: int, floor: int) -> int:
        """Reserve ``[start, start + size)`` from ``counter``; return ``start``.

        Ranges from one counter never overlap, across replicas and restarts; the first
        range starts at ``floor`` or later.
        """
