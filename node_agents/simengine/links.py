"""A node's connections to one PD master, as a LightLLM node keeps them.

``/pd_register``: a text registration frame, then pickled frames both ways.
``/kv_move_status`` (decode nodes): text JSON frames announcing finished KV hand-offs
(v1.2.0: binary frames, a pickled ``PDUpKVStatus``, announcing reserved KV slots).
With ``heartbeat`` (v1.2.0 nodes), the link sends its frame every ``heartbeat_s`` from
connect; ``heartbeat()`` returning None skips a beat (a fault knob).
The link reconnects after ``reconnect_s`` when the master goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import CloseCode

from node_agents.simengine.wsdirect import DirectFrames
from pdwire.message_sets import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

FrameHandler = Callable[["MasterLink", bytes], Awaitable[None]]


class MasterLink:
    def __init__(
        self,
        master_id: int,
        address: str,
        registration: dict[str, Any],
        on_frame: FrameHandler,
        on_lost: Callable[[MasterLink], None],
        wants_kv_status: bool,
        reconnect_s: float,
        heartbeat: Callable[[], bytes | None] | None = None,
        heartbeat_s: float = 15.0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.master_id = master_id
        self._heartbeat = heartbeat
        self._heartbeat_s = heartbeat_s
        self.address = address
        self._registration = json.dumps(registration)
        self._local_addr = _loopback_source(registration)
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._wants_kv_status = wants_kv_status
        self._reconnect_s = reconnect_s
        self._max_frame_bytes = max_frame_bytes
        self._ws: ClientConnection | None = None
        self._kv_ws: ClientConnection | None = None
        self._direct = DirectFrames()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                    log.warning(
                        "closed the link to master %s: a frame larger than --ws_max_size (1009)",
                        self.address,
                    )
                else:
                    log.info("master %s gone: %s", self.address, exc)
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.info("master %s unreachable or gone: %s", self.address, exc)
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._ws = self._kv_ws = None
                if was_connected:
                    self._on_lost(self)
            await asyncio.sleep(self._reconnect_s)

    async def _session(self) -> None:
        base = f"ws://{self.address}"
        options: dict[str, Any] = {
            "max_size": self._max_frame_bytes,
            "ping_interval": 20.0,
            "compression": None,
        }
        if self._local_addr is not None:
            options["local_addr"] = self._local_addr
        async with connect(f"{base}/pd_register", **options) as ws:
            await ws.send(self._registration)
            if self._wants_kv_status:
                async with connect(f"{base}/kv_move_status", **options) as kv:
                    await self._serve(ws, kv)
            else:
                await self._serve(ws, None)

    async def _serve(self, ws: ClientConnection, kv: ClientConnection | None) -> None:
        self._ws, self._kv_ws = ws, kv
        self.connected.set()
        log.info("connected to master %s (id %d)", self.address, self.master_id)
        beats = asyncio.create_task(self._beat(ws)) if self._heartbeat is not None else None
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    await self._on_frame(self, frame)
        finally:
            if beats is not None:
                beats.cancel()

    async def _beat(self, ws: ClientConnection) -> None:
        assert self._heartbeat is not None
        with contextlib.suppress(WebSocketException, OSError):
            while True:
                frame = self._heartbeat()
                if frame is not None:
                    await ws.send(frame)
                await asyncio.sleep(self._heartbeat_s)

    def send_now(self, data: bytes) -> bool:
        """``data`` written now, straight to the connection, if nothing is in its way (see
        ``DirectFrames``); False: ``send`` it (which waits, or says the link is down)."""
        ws = self._ws
        return ws is not None and self._direct.write(ws, data)

    async def send(self, data: bytes) -> bool:
        ws = self._ws
        if ws is None:
            return False
        if self._direct.write(ws, data):
            return True
        try:
            await ws.send(data)
        except (WebSocketException, OSError):
            return False
        return True

    async def send_kv_status(self, status: dict[str, Any] | bytes) -> bool:
        ws = self._kv_ws
        if ws is None:
            return False
        try:
            await ws.send(status if isinstance(status, bytes) else json.dumps(status))
        except (WebSocketException, OSError):
            return False
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        for ws in (self._ws, self._kv_ws):
            if ws is not None:
                await ws.close(code, reason)


def _loopback_source(registration: dict[str, Any]) -> tuple[str, int] | None:
    """Nodes on distinct loopback addresses of one machine connect from their own address,
    as nodes on distinct hosts do: masters know a node by the address it connects from."""
    host = registration.get("start_args", {}).get("host")
    try:
        loopback = isinstance(host, str) and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    return (host, 0) if loopback else None


class LinkSet:
    """One ``MasterLink`` per master in the current set, as a LightLLM node keeps them.

    ``update(masters)`` opens links to masters that joined and closes those to masters
    that left (by id; a master whose address changed is a new one).
    """

    def __init__(
        self,
        links: dict[int, MasterLink],
        registration: dict[str, Any],
        on_frame: FrameHandler,
        on_lost: Callable[[MasterLink], None],
        wants_kv_status: bool,
        reconnect_s: float,
        heartbeat: Callable[[], bytes | None] | None = None,
        heartbeat_s: float = 15.0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.links = links  # shared with the node, which answers through them
        self._heartbeat = heartbeat
        self._heartbeat_s = heartbeat_s
        self._registration = registration
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._wants_kv_status = wants_kv_status
        self._reconnect_s = reconnect_s
        self._max_frame_bytes = max_frame_bytes
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def update(self, masters: Mapping[int, str]) -> None:
        """``masters``: master id -> ``host:port``."""
        for master_id in list(self.links):
            if masters.get(master_id) != self.links[master_id].address:
                await self._drop(master_id)
        for master_id, address in masters.items():
            if master_id not in self.links:
                link = MasterLink(
                    master_id,
                    address,
                    self._registration,
                    self._on_frame,
                    self._on_lost,
                    self._wants_kv_status,
                    self._reconnect_s,
                    self._heartbeat,
                    self._heartbeat_s,
                    self._max_frame_bytes,
                )
                self.links[master_id] = link
                self._tasks[master_id] = asyncio.create_task(link.run(), name=f"link-{address}")
                log.info("master %s (id %d) joined the set", address, master_id)

    async def _drop(self, master_id: int) -> None:
        link = self.links.pop(master_id)
        task = self._tasks.pop(master_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(WebSocketException, OSError):
            await link.close()
        log.info("master %s (id %d) left the set; link closed", link.address, master_id)

    async def close(self) -> None:
        for master_id in list(self.links):
            await self._drop(master_id)
