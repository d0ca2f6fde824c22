"""A master's ties to the config server: registration, id ranges and node drains.

With ``--config_server_host/--config_server_port`` a master (as in LightLLM's multi-master
mode) registers itself both ways (``MasterRegistration``), takes its group request ids
from the config server's ranges (``IdRangeSource``), and follows the registry's node
records (``DrainWatch``): a node agent that drains its node sets the node's state to
DRAINING (then DRAINED) in the config server, and every master watching stops selecting
that node. Usage::

    link = ConfigServerLink(client, settings, pool, admission)
    dispatcher = PDDispatcher(..., link.ids, ...)
    async with link:  # in the app's lifespan
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from pdmaster.cluster.id_ranges import IdRangeSource
from pdmaster.cluster.outage import ConfigServerStatus, is_lightllm_404
from pdmaster.cluster.registration import MasterRegistration
from pdmaster.nodes.pool import NodePool
from pdmaster.routing.admission import Admission
from pdwire.api import base_url

log = logging.getLogger(__name__)

# Node agent states in which masters must not select the node (node_agents.agent.state).
DRAIN_STATES = frozenset({"DRAINING", "DRAINED", "STOPPING"})


class DrainWatch:
    """Follows ``GET /v1/watch`` and keeps the pool's config-drained addresses current."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        on_drained: Callable[[set[str]], None],
        *,
        on_names: Callable[[dict[str, str]], None] = lambda names: None,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry_s: float = 1.0,
        retry_max_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        status: ConfigServerStatus | None = None,
    ) -> None:
        self._client = client
        self._status = status or ConfigServerStatus(config_server, time.monotonic)
        self._url = f"{base_url(config_server)}/v1/watch"
        self._on_drained = on_drained
        self._on_names = on_names
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._sleep = sleep
        self.revision = 0
        self.nodes: dict[str, dict[str, Any]] = {}  # node records by id
        self.synced = asyncio.Event()  # set after the first answer

    def drained_addresses(self) -> set[str]:
        return {r["address"] for r in self.nodes.values() if r.get("state") in DRAIN_STATES}

    async def run(self) -> None:
        delay = self._retry_s
        while not self._status.lightllm_only:
            try:
                reply = await self._client.get(
                    self._url,
                    params={"revision": self.revision, "timeout_s": self._timeout_s},
                    headers=self._headers,
                    timeout=self._timeout_s + 10.0,
                )
                if is_lightllm_404(reply):
                    self._status.lightllm_detected()
                    return
                reply.raise_for_status()
                self.apply(reply.json())
                self._status.succeeded()
                delay = self._retry_s
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self._status.failed("watch", repr(exc))
                self.revision = 0  # the next answer is a snapshot: no change is missed
                await self._sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    def apply(self, answer: dict[str, Any]) -> None:
        """Fold one watch answer (changes, or a snapshot when ``reset``) into the view."""
        before = self.drained_addresses()
        if answer.get("reset"):
            self.nodes = {}
        for event in answer["events"]:
            if event["kind"] != "node":
                continue
            if event["type"] == "put" and isinstance(event.get("record"), dict):
                self.nodes[event["id"]] = event["record"]
            else:
                self.nodes.pop(event["id"], None)
        self.revision = int(answer["revision"])
        self._on_names(
            {r["address"]: node_id for node_id, r in self.nodes.items() if "address" in r}
        )
        after = self.drained_addresses()
        if after != before or not self.synced.is_set():
            for address in sorted(after - before):
                log.info("node %s drains (config server)", address)
            for address in sorted(before - after):
                log.info("node %s no longer drains (config server)", address)
            self._on_drained(after)
        self.synced.set()


class ConfigServerLink:
    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        node_id: int,
        address: str,
        pool: NodePool,
        admission: Admission,
        *,
        register_token: str | None = None,
        lease_ttl_s: float = 10.0,
        heartbeat_s: float = 30.0,
        watch_timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self._pool = pool
        self._admission = admission
        self.ids = IdRangeSource(client, config_server, token=register_token)
        self.status = ConfigServerStatus(config_server, time.monotonic)
        self.registration = MasterRegistration(
            client,
            config_server,
            node_id,
            address,
            ttl_s=lease_ttl_s,
            heartbeat_s=heartbeat_s,
            info=self.info,
            register_token=register_token,
            status=self.status,
        )
        self.watch = DrainWatch(
            client,
            config_server,
            pool.set_config_drained,
            on_names=pool.set_agent_names,
            token=register_token,
            timeout_s=watch_timeout_s,
            status=self.status,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def info(self) -> dict[str, Any]:
        """What the master's lease shows in the config server's ``/v1/masters``."""
        return {
            "in_flight_requests": self._admission.inflight,
            "queued_requests": self._admission.queued,
            "nodes": [
                {
                    "node_id": self._pool.name_of(n),
                    "lightllm_node_id": str(n.node_id),
                    "role": n.info.mode,
                    "address": n.info.client_ip_port,
                    "in_flight_requests": n.in_flight,
                    "draining": n.draining,
                    "lightllm_version": n.info.version,
                    "pd_trans_mode": n.info.pd_trans_mode,
                }
                for n in self._pool.nodes()
            ],
        }

    async def __aenter__(self) -> ConfigServerLink:
        self._tasks = [
            asyncio.create_task(self.registration.run(), name="master-registration"),
            asyncio.create_task(self.watch.run(), name="config-drain-watch"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.registration.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.ids.aclose()
