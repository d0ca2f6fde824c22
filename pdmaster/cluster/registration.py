"""Keeps a master registered with the config server, both ways the cluster knows masters.

- LightLLM's websocket ``/pd_master_register``: the pickled ``PD_Master_Obj``, then a text
  ``"heartbeat"`` every ``heartbeat_s``. LightLLM nodes learn masters from this, through
  ``/registered_objects``. When the socket drops (a config-server restart) it reconnects
  and sends the object again, which registers the master again.
- Our lease, ``PUT /v1/masters/{id}``, renewed every third of ``ttl_s`` with ``state`` and
  ``info`` (load, connected nodes, ...). The PUT is register-or-renew, so the first renewal
  after a config-server restart registers the master again.

Failures are retried with a backoff from ``retry_initial_s`` doubling to ``retry_max_s``,
and reported through a shared ``ConfigServerStatus`` (once per outage, with summaries). A
lease refused with a plain 404 means LightLLM's own config server: the lease stops and the
websocket goes on.
Usage::

    async with MasterRegistration(client, "cfg:60088", node_id, "10.0.0.5:60011") as reg:
        ...  # serve; ``await reg.stop()`` (or leaving the block) deregisters
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from pdmaster.cluster.outage import ConfigServerStatus, is_lightllm_404
from pdwire.api import base_url
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj

log = logging.getLogger(__name__)
CONFIG_SERVER_FRAME_BYTES = 64 * 1024  # the config server sends no frames on this socket


class MasterRegistration:
    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        node_id: int,
        address: str,
        *,
        ttl_s: float = 10.0,
        heartbeat_s: float = 30.0,
        state: Callable[[], str] | None = None,
        info: Callable[[], dict[str, Any]] | None = None,
        register_token: str | None = None,
        websocket: bool = True,
        lease: bool = True,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        connect_ws: Callable[..., Any] = connect,
        status: ConfigServerStatus | None = None,
    ) -> None:
        self._client = client
        self.status = status or ConfigServerStatus(config_server, time.monotonic)
        url = base_url(config_server)
        self._lease_url = f"{url}/v1/masters/{node_id}"
        self._ws_url = "ws" + url.removeprefix("http") + "/pd_master_register"
        self.node_id = node_id
        self.address = address
        self._ttl_s = ttl_s
        self._heartbeat_s = heartbeat_s
        self._state = state or (lambda: "serving")
        self._info = info or dict
        self._headers = {"Authorization": f"Bearer {register_token}"} if register_token else {}
        self._use_websocket = websocket
        self._use_lease = lease
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._sleep = sleep
        self._connect_ws = connect_ws
        self._registration = LightLLMCodec.encode_pd_master_obj(PD_Master_Obj(node_id, address))
        self.ws_connected = asyncio.Event()  # set while the websocket registration is up
        self.lease_ok = asyncio.Event()  # set while the last lease renewal succeeded
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def __aenter__(self) -> MasterRegistration:
        self._runner = asyncio.create_task(self.run(), name="master-registration")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        await self._runner

    async def run(self) -> None:
        """Register and stay registered until ``stop()``."""
        loops = []
        if self._use_websocket:
            loops.append(self._websocket_loop())
        if self._use_lease:
            loops.append(self._lease_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            await asyncio.gather(*self._tasks)
        except asyncio.CancelledError:
            if not self._stopping:  # cancelled from outside, not by stop()
                raise
        finally:
            for task in self._tasks:
                task.cancel()

    async def stop(self, deregister: bool = True) -> None:
        """Stop renewing; with ``deregister``, remove the lease now rather than at expiry."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if deregister and self._use_lease:
            with contextlib.suppress(httpx.HTTPError):
                await self._client.delete(self._lease_url, headers=self._headers, timeout=2.0)

    # -- LightLLM's websocket -------------------------------------------------------------
    async def _websocket_loop(self) -> None:
        delay = self._retry_initial_s
        while True:
            try:
                async with self._connect_ws(
                    self._ws_url,
                    open_timeout=5.0,
                    close_timeout=2.0,
                    compression=None,
                    max_size=CONFIG_SERVER_FRAME_BYTES,
                ) as ws:
                    await ws.send(self._registration)
                    self.ws_connected.set()
                    self.status.succeeded()
                    delay = self._retry_initial_s
                    log.info("registered master %d with %s", self.node_id, self._ws_url)
                    await self._heartbeat_until_closed(ws)
            except (OSError, WebSocketException, TimeoutError) as exc:
                self.status.failed("websocket", str(exc) or type(exc).__name__)
            finally:
                self.ws_connected.clear()
            await self._sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _heartbeat_until_closed(self, ws: ClientConnection) -> None:
        closed = asyncio.create_task(ws.wait_closed())
        try:
            while True:
                beat = asyncio.ensure_future(self._sleep(self._heartbeat_s))
                await asyncio.wait({closed, beat}, return_when=asyncio.FIRST_COMPLETED)
                beat.cancel()
                if closed.done():
                    log.warning("config server closed the registration socket (%s)", ws.close_code)
                    return
                await ws.send("heartbeat")
        finally:
            closed.cancel()

    # -- our lease ------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        delay = self._retry_initial_s
        while not self.status.lightllm_only:
            if await self._renew():
                self.lease_ok.set()
                delay = self._retry_initial_s
                wait = self._ttl_s / 3
            else:
                self.lease_ok.clear()
                wait = delay
                delay = min(delay * 2, self._retry_max_s, self._ttl_s / 3)
            await self._sleep(wait)

    async def _renew(self) -> bool:
        body = {
            "address": self.address,
            "state": self._state(),
            "ttl_s": self._ttl_s,
            "info": self._info(),
        }
        try:
            reply = await self._client.put(
                self._lease_url, json=body, headers=self._headers, timeout=self._ttl_s / 3
            )
        except httpx.HTTPError as exc:
            self.status.failed("lease", repr(exc))
            return False
        if is_lightllm_404(reply):
            self.status.lightllm_detected()
            return False
        if reply.status_code != 200:
            self.status.failed(
                "lease", f"master lease refused ({reply.status_code}): {reply.text[:300]}"
            )
            return False
        self.status.succeeded()
        return True
