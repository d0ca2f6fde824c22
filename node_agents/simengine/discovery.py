"""Finds the PD masters a node should connect to, as a LightLLM node does in multi-master mode.

Polls the config server's ``GET /registered_objects`` every ``interval_s`` (LightLLM: 30 s),
decodes the answer with the restricted codec (never ``pickle.loads``), and calls
``on_change(masters)`` with the full ``{node_id: PD_Master_Obj}`` set after the first
successful poll and whenever the set changes. The node keeps one connection per master in
the set and closes connections to masters that left it. When a poll fails the last set is
kept (a config-server restart must not disconnect every master); the next try comes after
``retry_s``. A master is dropped only once missing from ``drop_after_misses`` polls in a
row and no longer connected, so one that re-registers after a config-server restart keeps
its connection. Usage::

    async with MasterDiscovery(client, "cfg:60088", node.update_masters, interval_s=30):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from pdwire.api import base_url
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj

log = logging.getLogger(__name__)

MasterSet = dict[int, PD_Master_Obj]


class MasterDiscovery:
    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        on_change: Callable[[MasterSet], Awaitable[None]],
        *,
        interval_s: float = 30.0,
        retry_s: float | None = None,
        drop_after_misses: int = 2,
        is_connected: Callable[[int], bool] = lambda _: False,
        keep_connected_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        codec: LightLLMCodec | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._url = base_url(config_server) + "/registered_objects"
        self._client = client
        self._on_change = on_change
        self._interval_s = interval_s
        self._retry_s = retry_s if retry_s is not None else min(interval_s, 10.0)
        self._codec = codec or LightLLMCodec()
        self._sleep = sleep
        self._drop_after_misses = drop_after_misses
        self._is_connected = is_connected
        self._keep_connected_s = keep_connected_s
        self._clock = clock
        self._missing: dict[int, tuple[int, float]] = {}  # id -> (polls missed, since)
        self.masters: MasterSet = {}
        self._reported = False
        self._runner: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def __aenter__(self) -> MasterDiscovery:
        self._runner = asyncio.create_task(self.run(), name="master-discovery")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        if self._runner is not None:
            await self._runner

    async def run(self) -> None:
        """Poll until ``stop()``."""
        self._loop_task = asyncio.create_task(self._poll_forever())
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        if not self._stopping:  # cancelled from outside, not by stop()
            raise asyncio.CancelledError

    async def stop(self) -> None:
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _poll_forever(self) -> None:
        while True:
            found = await self.poll_once()
            if found is not None:
                found = self._with_grace(found)
            if found is not None and (found != self.masters or not self._reported):
                self.masters = found
                self._reported = True
                await self._on_change(dict(found))
            await self._sleep(self._interval_s if found is not None else self._retry_s)

    def _with_grace(self, found: MasterSet) -> MasterSet:
        """A restarted config server lists its masters again only as they re-register, so a
        master missing from the list is kept for ``drop_after_misses`` polls in a row, and
        for up to ``keep_connected_s`` while this node's connection to it is up."""
        kept = dict(found)
        now = self._clock()
        for node_id, master in self.masters.items():
            if node_id in found:
                self._missing.pop(node_id, None)
                continue
            misses, since = self._missing.get(node_id, (0, now))
            misses += 1
            alive = self._is_connected(node_id) and now - since < self._keep_connected_s
            if misses < self._drop_after_misses or alive:
                kept[node_id] = master
                self._missing[node_id] = (misses, since)
            else:
                self._missing.pop(node_id, None)
        return kept

    async def poll_once(self) -> MasterSet | None:
        """The config server's current masters, or None when it cannot be read."""
        try:
            reply = await self._client.get(self._url, timeout=10.0)
            reply.raise_for_status()
            return self._codec.decode_registered_objects_answer(reply.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot read masters from %s: %r", self._url, exc)
        except WireError as exc:
            log.error("refusing the master list from %s: %s", self._url, exc)
        return None
