"""Group request ids from the config server's id ranges, so two masters never share an id.

``GET /allocate_global_unique_id_range`` answers ``{"start_id", "end_id"}``; like LightLLM's
master, ids start at the first multiple of 8 above ``start_id``, advance by 8
(``MAX_BEST_OF``, so a group's sub-request ids stay in the range) and stop 8 before
``end_id``. The next range is fetched in the background once the current one is half used,
so ``next()`` only waits for the network when ranges run out faster than they arrive
(``take()`` is None then).
Usage::

    async with IdRangeSource(client, "cfg:60088") as ids:
        group_request_id = await ids.next()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import httpx

from pdwire.api import base_url
from pdwire.pd_io import MAX_BEST_OF

log = logging.getLogger(__name__)

GROUP_IDS_PATH = "/allocate_global_unique_id_range"
MULTIMODAL_IDS_PATH = "/allocate_global_unique_multimodal_id_range"


class IdRangeSource:
    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        *,
        path: str = GROUP_IDS_PATH,
        step: int = MAX_BEST_OF,
        prefetch_at: float = 0.5,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        token: str | None = None,
    ) -> None:
        self._url = base_url(config_server) + path
        # the config server lets a master outside --allow-cidr take ranges with its token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client
        self._step = step
        self._prefetch_at = prefetch_at
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._sleep = sleep
        self._next_id = 0
        self._end = 0
        self._range_ids = 0  # ids in the current range
        self._spare: tuple[int, int] | None = None  # the prefetched range
        self._fetch: asyncio.Task[None] | None = None
        self.ranges_fetched = 0

    async def __aenter__(self) -> IdRangeSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def take(self) -> int | None:
        """The next id if the ranges at hand hold one, else None (``next`` waits for one)."""
        if self._next_id + self._step >= self._end and self._spare is not None:
            self._use(*self._spare)
            self._spare = None
        if self._next_id + self._step >= self._end:
            return None
        value = self._next_id
        self._next_id += self._step
        if self._spare is None and self._fetch is None and self._running_low():
            self._start_fetch()
        return value

    async def next(self) -> int:
        while (value := self.take()) is None:
            if self._fetch is None:
                self._start_fetch()
            assert self._fetch is not None
            await asyncio.shield(self._fetch)
        return value

    async def aclose(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch

    def _running_low(self) -> bool:
        left = (self._end - self._next_id) // self._step
        return left <= self._range_ids * self._prefetch_at

    def _use(self, start: int, end: int) -> None:
        self._next_id = (start // self._step + 1) * self._step
        self._end = end
        self._range_ids = max((end - self._next_id) // self._step, 1)

    def _start_fetch(self) -> None:
        self._fetch = asyncio.create_task(self._fetch_range(), name="id-range-fetch")

    async def _fetch_range(self) -> None:
        delay = self._retry_initial_s
        try:
            while True:
                try:
                    reply = await self._client.get(self._url, headers=self._headers, timeout=5.0)
                    reply.raise_for_status()
                    data = reply.json()
                    start, end = int(data["start_id"]), int(data["end_id"])
                    if (start // self._step + 1) * self._step + self._step >= end:
                        raise ValueError(f"range {start}..{end} holds no id")
                    self._spare = (start, end)
                    self.ranges_fetched += 1
                    return
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    log.warning("cannot get an id range from %s: %r", self._url, exc)
                await self._sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
        finally:
            self._fetch = None
