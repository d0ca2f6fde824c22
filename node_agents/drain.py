"""Draining a node: every master stops selecting it, its running requests finish.

The engine cannot be told to stop taking requests (LightLLM has no such switch), so the
masters must stop selecting it. With a config server, the drain goes through it: the
agent's registration turns to DRAINING, and every master follows the config server's
records and stops selecting the node at that address. With a single configured master
the agent marks the node itself: ``POST /v1/nodes/{node_id}/drain``, repeated on every
poll, so an engine that restarts and reconnects under a new node id is drained too.

Either way the agent reads ``GET /v1/nodes?role=R`` on each master (the configured one,
or those the config server lists in ``/registered_objects``, LightLLM's own discovery),
finds the node by its address (``client_ip_port``), and sees there when every master
shows it draining and when its ``in_flight_requests`` are done.

Undraining reverses it: the registration turns back to RUNNING (masters following the
config server select the node again), and a directly marked node is undrained on each
master with ``POST /v1/nodes/{node_id}/undrain``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from pdwire.api import base_url
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
            masters = self._codec.decode_registered_objects_answer(reply.json())
        except (ValueError, WireError) as exc:
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
        mark_directly: bool = True,
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
        self._mark_directly = mark_directly
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
                if not node.get("draining") and self._mark_directly:
                    drained = await self._client.post(
                        f"{url}/{node['node_id']}/drain", headers=self._headers, timeout=5.0
                    )
                    drained.raise_for_status()
                    node["draining"] = True
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "nodes": len(mine),
            "draining": all(n.get("draining") for n in mine),
            "in_flight": sum(n.get("in_flight_requests", 0) for n in mine),
        }

    async def unmark(self) -> dict[str, Any]:
        """Undrain this node on every master that was told directly; per master: the
        result, or an error."""
        if not self._mark_directly:
            return {}
        try:
            addresses = await self._masters.addresses()
        except (httpx.HTTPError, ValueError) as exc:
            return {"config_server": {"error": f"cannot list masters: {exc}"}}
        results = await asyncio.gather(*(self._unmark_on(a) for a in addresses))
        return dict(zip(addresses, results, strict=True))

    async def _unmark_on(self, master: str) -> dict[str, Any]:
        url = f"{base_url(master)}/v1/nodes"
        try:
            reply = await self._client.get(
                url, params={"role": self._role}, headers=self._headers, timeout=5.0
            )
            reply.raise_for_status()
            mine = [n for n in reply.json()["items"] if n.get("address") == self._address]
            for node in mine:
                if node.get("draining"):
                    undrained = await self._client.post(
                        f"{url}/{node['node_id']}/undrain", headers=self._headers, timeout=5.0
                    )
                    undrained.raise_for_status()
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"nodes": len(mine), "draining": False}

    async def run(
        self, on_drained: Callable[[], None] | None = None, marked: asyncio.Event | None = None
    ) -> None:
        """Mark and watch until cancelled. ``marked`` is set once every reachable master
        shows the node draining; ``on_drained`` runs once, when every master shows it
        draining with nothing in flight (or when ``timeout_s`` has passed)."""
        self.status, self.started_at = "draining", self._clock()
        notified = False
        while True:
            self.masters = await self.mark()
            reachable = [r for r in self.masters.values() if "error" not in r]
            stopped = all(r["draining"] for r in reachable)
            if marked is not None and stopped:
                marked.set()
            self.in_flight = sum(r["in_flight"] for r in reachable)
            if len(reachable) == len(self.masters) and stopped and self.in_flight == 0:
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
