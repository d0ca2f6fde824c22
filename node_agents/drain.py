"""Draining a node: every master stops selecting it, its running requests finish.

The engine cannot be told to stop taking requests (LightLLM has no such switch), so the
agent asks each master instead: ``GET /v1/nodes?role=R`` finds the node by its address
(``client_ip_port``), ``POST /v1/nodes/{node_id}/drain`` marks it, and the node's
``in_flight_requests`` on every master shows when its running requests are done. The
masters are the configured single master, or those the config server lists in
``/registered_objects`` (LightLLM's own discovery). The marking is repeated on every poll,
so an engine that restarts and reconnects under a new node id while draining is drained
too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from node_agents.registration import base_url
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec

log = logging.getLogger(__name__)


class MasterDirectory:
    """The masters this node's engine talks to, as LightLLM's node finds them."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        pd_master: str | None,
        config_server: str | None,
        codec: LightLLMCodec | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self._pd_master = pd_master
        self._config_server = config_server
        self._codec = codec or LightLLMCodec()
        self._timeout_s = timeout_s

    async def addresses(self) -> list[str]:
        if self._pd_master is not None:
            return [self._pd_master]
        assert self._config_server is not None
        url = f"{base_url(self._config_server)}/registered_objects"
        reply = await self._client.get(url, timeout=self._timeout_s)
        reply.raise_for_status()
        try:
            data = base64.b64decode(reply.json()["data"])
            masters = self._codec.decode_registered_objects(data)
        except (KeyError, TypeError, ValueError, binascii.Error, WireError) as exc:
            raise ValueError(f"unreadable /registered_objects answer: {exc}") from None
        return sorted(m.host_ip_port for m in masters.values())


class Drainer:
    def __init__(
        self,
        client: httpx.AsyncClient,
        masters: MasterDirectory,
        engine_address: str,
        role: str,
        admin_token: str | None,
        timeout_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll_s: float = 0.25,
    ) -> None:
        self._client = client
        self._masters = masters
        self._address = engine_address
        self._role = role
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self._poll_s = poll_s
        self.status = "idle"  # idle | draining | drained | timed_out
        self.started_at: float | None = None
        self.in_flight: int | None = None
        self.masters: dict[str, Any] = {}

    async def mark(self) -> dict[str, Any]:
        """Mark this node draining on every master; per master: its in-flight count or error."""
        try:
            addresses = await self._masters.addresses()
        except (httpx.HTTPError, ValueError) as exc:
            return {"config_server": {"error": f"cannot list masters: {exc}"}}
        results = await asyncio.gather(*(self._mark_on(a) for a in addresses))
        return dict(zip(addresses, results, strict=True))

    async def _mark_on(self, master: str) -> dict[str, Any]:
        url = f"{base_url(master)}/v1/nodes"
        try:
            reply = await self._client.get(
                url, params={"role": self._role}, headers=self._headers, timeout=5.0
            )
            if reply.status_code == 404:
                return {"error": "this master has no /v1/nodes drain API (a LightLLM master?)"}
            reply.raise_for_status()
            mine = [n for n in reply.json()["items"] if n.get("address") == self._address]
            for node in mine:
                if not node.get("draining"):
                    drained = await self._client.post(
                        f"{url}/{node['node_id']}/drain", headers=self._headers, timeout=5.0
                    )
                    drained.raise_for_status()
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"nodes": len(mine), "in_flight": sum(n.get("in_flight_requests", 0) for n in mine)}

    async def run(
        self, on_drained: Callable[[], None] | None = None, marked: asyncio.Event | None = None
    ) -> None:
        """Mark and watch until cancelled. ``marked`` is set once every master has been asked;
        ``on_drained`` runs once, when nothing is in flight on any reachable master (or when
        ``timeout_s`` has passed)."""
        self.status, self.started_at = "draining", self._clock()
        notified = False
        while True:
            self.masters = await self.mark()
            if marked is not None:
                marked.set()
            reachable = [r for r in self.masters.values() if "error" not in r]
            self.in_flight = sum(r["in_flight"] for r in reachable)
            if len(reachable) == len(self.masters) and self.in_flight == 0:
                self.status = "drained"
            elif self._clock() - self.started_at >= self._timeout_s:
                self.status = "timed_out"
            else:
                self.status = "draining"
            if self.status != "draining" and not notified:
                notified = True
                log.info("drain %s (in flight: %s)", self.status, self.in_flight)
                if on_drained is not None:
                    on_drained()
            await self._sleep(self._poll_s)

    def reset(self) -> None:
        self.status, self.started_at, self.in_flight, self.masters = "idle", None, None, {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "started_at": self.started_at,
            "in_flight": self.in_flight,
            "masters": self.masters,
        }
