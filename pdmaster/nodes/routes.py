"""The node side of a master: websockets /pd_register and /kv_move_status (LightLLM's protocol).

Their JSON frames are read with ``pdwire.jsonlimits`` (bounded size, depth and integers;
128-bit node ids stay exact). Every peer is checked against ``--allow-cidr`` before the
handshake; a node speaks only for itself: its id, while live, is held by the address it
connected from, and a ``kv_move_status`` counts only from the address of the decode node
its request was sent to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pdmaster.nodes.pool import NodeInfo, NodePool, RegistrationError
from pdmaster.nodes.tracking import RequestTable
from pdwire import jsonlimits
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec, ObjType, UpKVStatus

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
MAX_REGISTRATION_BYTES = 256 * 1024  # LightLLM's are ~3-5 KB (its start_args)
MAX_KV_STATUS_BYTES = 16 * 1024  # ~200 bytes


def node_router(
    pool: NodePool,
    table: RequestTable,
    codec: LightLLMCodec,
    registration_timeout_s: float,
    allows: Callable[[str | None], bool] = lambda host: True,
) -> APIRouter:
    router = APIRouter()

    @router.websocket("/pd_register")
    async def pd_register(ws: WebSocket) -> None:
        host = await _accept(ws, allows, "/pd_register")
        if host is None:
            return
        try:
            async with asyncio.timeout(registration_timeout_s):
                first = await ws.receive_text()
            frame = jsonlimits.loads(first, max_bytes=MAX_REGISTRATION_BYTES)
            info = NodeInfo.from_registration(frame)
            conn = pool.connect(info, ws.send_bytes, host)
        except (TimeoutError, RegistrationError, jsonlimits.JsonRefused, KeyError) as exc:
            reason = str(exc) or "no registration frame in time"
            code = getattr(exc, "close_code", POLICY_VIOLATION)
            log.warning("refused node registration from %s: %s", _peer(ws), reason)
            await ws.close(code, reason[:120])
            return
        except WebSocketDisconnect:
            return
        reason = "socket closed"
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    continue  # LightLLM nodes send only binary frames after registering
                kind, payload, load = codec.decode_node_message(data)
                if load is not None:
                    pool.record_load(conn, load)
                if kind is ObjType.TOKEN_PACKS:
                    table.deliver(conn, codec.decode_token_packs(payload))
        except WireError as exc:
            reason = f"protocol error: {exc}"
            await ws.close(POLICY_VIOLATION, reason[:120])
        except WebSocketDisconnect:
            pass
        finally:
            pool.disconnect(conn, reason)

    @router.websocket("/kv_move_status")
    async def kv_move_status(ws: WebSocket) -> None:
        host = await _accept(ws, allows, "/kv_move_status")
        if host is None:
            return
        try:
            while True:
                text = await ws.receive_text()
                frame = jsonlimits.loads(text, max_bytes=MAX_KV_STATUS_BYTES)
                status = UpKVStatus.from_json_dict(frame)
                if not table.kv_arrived(status, host):
                    log.warning(
                        "ignored kv_move_status for group %d from %s: not its decode node",
                        status.group_request_id,
                        _peer(ws),
                    )
        except (WireError, KeyError) as exc:
            log.warning("bad kv_move_status frame from %s: %s", _peer(ws), exc)
            await ws.close(getattr(exc, "close_code", POLICY_VIOLATION), str(exc)[:120])
        except WebSocketDisconnect:
            pass

    return router


async def _accept(ws: WebSocket, allows: Callable[[str | None], bool], path: str) -> str | None:
    """The peer's IP once the socket is accepted; None (handshake refused with 403) if the
    peer is outside ``--allow-cidr``."""
    host = ws.client.host if ws.client else None
    if host is None or not allows(host):
        log.warning("refused %s from %s: not in --allow-cidr", path, _peer(ws))
        await ws.close(POLICY_VIOLATION)
        return None
    await ws.accept()
    return host


def _peer(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown peer"
