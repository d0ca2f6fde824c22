"""Group request ids: multiples of MAX_BEST_OF so sub request ids map back to their group."""

from __future__ import annotations

from pdwire.pd_io import MAX_BEST_OF


class LocalIdSource:
    """Ids for a master without a config server (the only master, so no collisions)."""

    def __init__(self, start: int = MAX_BEST_OF) -> None:
        if start % MAX_BEST_OF:
            raise ValueError(f"group ids are multiples of {MAX_BEST_OF}, got start={start}")
        self._next = start

    async def next(self) -> int:
        value = self._next
        self._next += MAX_BEST_OF
        return value
