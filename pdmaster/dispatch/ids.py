"""Group request ids: multiples of MAX_BEST_OF so sub request ids map back to their group."""

from __future__ import annotations

from typing import Protocol

from pdwire.pd_io import MAX_BEST_OF


class IdSource(Protocol):
    def take(self) -> int | None:
        """The next id, if one is at hand (no wait), else None."""
        ...

    async def next(self) -> int:
        """The next id, once there is one."""
        ...


class LocalIdSource:
    """Ids for a master without a config server (the only master, so no collisions)."""

    def __init__(self, start: int = MAX_BEST_OF) -> None:
        if start % MAX_BEST_OF:
            raise ValueError(f"group ids are multiples of {MAX_BEST_OF}, got start={start}")
        self._next = start

    def take(self) -> int:
        value = self._next
        self._next += MAX_BEST_OF
        return value

    async def next(self) -> int:
        return self.take()
