"""LightLLM's config-server API, byte-compatible with its masters and nodes.

``ws /pd_master_register``: a pickled PD_Master_Obj, then text "heartbeat" frames.
``GET /registered_objects``: ``{"data": base64(pickle({node_id: PD_Master_Obj}))}``.
``GET /allocate_global_unique_id_range`` and ``.../multimodal_id_range``: id ranges.
Health: ``/health``, ``/healthz``, ``/liveness``, ``/readiness``.

LightLLM peers cannot send tokens, so all but the health endpoints check the peer against
the allowlist. The id ranges also take a peer outside it that sends the register token
(``Authorization: Bearer``), as pdctl's masters do: with ``--allow-cidr`` set to the
networks of LightLLM's own masters (or to 127.0.0.1/32 when there are none), nobody else
can drain the id counters. Pickles are decoded with the restricted codec: anything but a
PD_Master_Obj closes the socket with 1008 and changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from starlette.websockets import WebSocketState

from config_server.auth import PeerAllowlist, bearer_is
from config_server.errors import Conflict
from config_server.lightllm_masters import LightLLMMasterSession
from config_server.registry import GROUP_REQUEST_IDS, MULTIMODAL_IDS, Registry
from config_server.responses import json_response
from config_server.store.base import StoreError
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
SERVICE_RESTART = 1012  # uvicorn closes sockets with this code when the server stops
FIRST_FRAME_TIMEOUT_S = 10.0


def lightllm_router(
    registry: Registry,
    allowlist: PeerAllowlist,
    codec: LightLLMCodec,
    lightllm_ttl_s: float,
    register_token: str | None = None,
) -> APIRouter:
    router = APIRouter()

    def check_id_range_peer(request: Request) -> None:
        if not bearer_is(request, register_token):
            allowlist.check(request)

    @router.api_route("/health", methods=["GET", "HEAD"])
    @router.get("/healthz")
    async def health() -> Any:
        return json_response({"message": "Ok"})

    @router.api_route("/liveness", methods=["GET", "POST"])
    async def liveness() -> Any:
        return json_response({"status": "ok"})

    @router.api_route("/readiness", methods=["GET", "POST"])
    async def readiness() -> Any:
        if not registry.ready:
            return json_response({"status": "loading"}, status=503)
        return json_response({"status": "ok", "revision": registry.store.view.head})

    @router.get("/registered_objects")
    async def registered_objects(request: Request) -> Any:
        allowlist.check(request)
        data = codec.encode_registered_objects(registry.lightllm_masters())
        return json_response({"data": base64.b64encode(data).decode("ascii")})

    @router.get("/allocate_global_unique_id_range")
    async def allocate_id_range(request: Request) -> Any:
        check_id_range_peer(request)
        return json_response(await registry.allocate(GROUP_REQUEST_IDS))

    @router.get("/allocate_global_unique_multimodal_id_range")
    async def allocate_multimodal_id_range(request: Request) -> Any:
        check_id_range_peer(request)
        return json_response(await registry.allocate(MULTIMODAL_IDS))

    @router.websocket("/pd_master_register")
    async def pd_master_register(ws: WebSocket) -> None:
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown"
        if not allowlist.allows(ws.client.host if ws.client else None):
            log.warning("refused /pd_master_register from %s: not in --allow-cidr", peer)
            await ws.close(code=POLICY_VIOLATION)  # before accept: the handshake gets 403
            return
        await ws.accept()
        session = await _open_session(ws, registry, codec, peer, lightllm_ttl_s)
        if session is None:
            return
        log.info(
            "LightLLM master %s at %s registered from %s",
            session.record_id,
            session.obj.host_ip_port,
            peer,
        )
        renewer = asyncio.create_task(session.keep_alive())
        close_code = None
        try:
            close_code = await _read_heartbeats(ws)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if close_code != SERVICE_RESTART:  # on our own shutdown, let the lease decide
                await session.release()
            log.info("LightLLM master %s disconnected (code %s)", session.record_id, close_code)

    return router


async def _open_session(
    ws: WebSocket, registry: Registry, codec: LightLLMCodec, peer: str, ttl_s: float
) -> LightLLMMasterSession | None:
    """Read and check the first frame and register the master; None if refused."""
    try:
        message = await asyncio.wait_for(ws.receive(), FIRST_FRAME_TIMEOUT_S)
    except TimeoutError:
        await ws.close(POLICY_VIOLATION, "no PD_Master_Obj within 10 s")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    data = message.get("bytes")
    if data is None:
        await ws.close(POLICY_VIOLATION, "first frame must be a pickled PD_Master_Obj")
        return None
    try:
        obj = codec.decode_pd_master_obj(data)
        session = LightLLMMasterSession(
            registry, obj, peer, ttl_s, peer_host=ws.client.host if ws.client else None
        )
        await session.renew()
    except (WireError, Conflict) as exc:
        log.warning("refused /pd_master_register from %s: %s", peer, exc)
        await ws.close(POLICY_VIOLATION, str(exc)[:120])
        return None
    except StoreError as exc:
        log.warning("cannot register LightLLM master %s: %s", session.record_id, exc)
        await ws.close(TRY_AGAIN_LATER, "registry store unavailable")
        return None
    return session


async def _read_heartbeats(ws: WebSocket) -> int | None:
    """Read "heartbeat" frames until the peer goes; return the close code."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return message.get("code")
        if message.get("text") != "heartbeat":
            log.warning(
                "closing /pd_master_register: expected 'heartbeat', got %r",
                (message.get("text") or message.get("bytes") or b"")[:40],
            )
            if ws.application_state != WebSocketState.DISCONNECTED:
                await ws.close(POLICY_VIOLATION, "expected a heartbeat text frame")
            return POLICY_VIOLATION
