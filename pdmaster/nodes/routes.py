"""The node side of a master: websockets /pd_register and /kv_move_status (LightLLM's protocol).

Each node's LightLLM version is recognised from its registration; its connection keeps that
version's codec. v1.2.0 nodes must send a frame (a token pack, a prompt-id upload or a
heartbeat) at least every ``heartbeat_timeout_s``, as LightLLM's master demands; a silent
one is closed with 1011 and its requests fail at once.

These frames carry 128-bit node ids, so they are parsed with the json module: orjson turns
integers past 64 bits into floats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pdmaster.nodes.pool import V12, NodeConnection, NodeInfo, NodePool, RegistrationError
from pdmaster.nodes.tracking import RequestTable
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec, ObjType, UpKVStatus

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011  # LightLLM closes a silent v1.2.0 node with it


def node_router(
    pool: NodePool,
    table: RequestTable,
    codecs: Mapping[str, LightLLMCodec],
    registration_timeout_s: float,
    heartbeat_timeout_s: float,
) -> APIRouter:
    router = APIRouter()
    accepted = frozenset(codecs)

    @router.websocket("/pd_register")
    async def pd_register(ws: WebSocket) -> None:
        await ws.accept()
        try:
            async with asyncio.timeout(registration_timeout_s):
                first = await ws.receive_text()
            info = NodeInfo.from_registration(json.loads(first), accepted)
        except (TimeoutError, RegistrationError, json.JSONDecodeError, KeyError) as exc:
            reason = str(exc) or "no registration frame in time"
            log.warning("refused node registration from %s: %s", ws.client, reason)
            await ws.close(POLICY_VIOLATION, reason[:120])
            return
        except WebSocketDisconnect:
            return
        conn = pool.connect(info, ws.send_bytes)
        codec = codecs[info.version]
        reason = "socket closed"
        try:
            if info.version == V12:
                reason = await _serve_v12(ws, conn, codec, pool, table, heartbeat_timeout_s)
            else:
                await _serve(ws, conn, codec, pool, table)
        except WireError as exc:
            reason = f"protocol error: {exc}"
            await ws.close(POLICY_VIOLATION, reason[:120])
        except WebSocketDisconnect:
            pass
        finally:
            pool.disconnect(conn, reason)

    @router.websocket("/kv_move_status")
    async def kv_move_status(ws: WebSocket) -> None:
        await ws.accept()
        v12 = codecs.get(V12)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data, text = message.get("bytes"), message.get("text")
                if data is not None and v12 is not None:  # v1.2.0: a pickled PDUpKVStatus
                    status = v12.decode_kv_status(data)
                    table.kv_reserved(status.group_request_id, v12.decode_trans_params(status))
                elif text is not None:
                    table.kv_arrived(UpKVStatus.from_json_dict(json.loads(text)))
                else:
                    raise WireError("kv_move_status frame of a version this master does not serve")
        except (WireError, json.JSONDecodeError, KeyError) as exc:
            log.warning("bad kv_move_status frame from %s: %s", ws.client, exc)
            await ws.close(POLICY_VIOLATION, str(exc)[:120])
        except WebSocketDisconnect:
            pass

    return router


async def _serve(
    ws: WebSocket,
    conn: NodeConnection,
    codec: LightLLMCodec,
    pool: NodePool,
    table: RequestTable,
) -> None:
    """v1.1.0 and fc72ffa: token packs until the socket closes."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            continue  # LightLLM nodes send only binary frames after registering
        kind, payload, load = codec.decode_node_message(data)
        if load is not None:
            pool.record_load(conn, load)
        if kind is ObjType.TOKEN_PACKS:
            table.deliver(conn, payload)  # checked by decode_node_message


async def _serve_v12(
    ws: WebSocket,
    conn: NodeConnection,
    codec: LightLLMCodec,
    pool: NodePool,
    table: RequestTable,
    heartbeat_timeout_s: float,
) -> str:
    """v1.2.0: token packs, prompt-id uploads and heartbeats, each within the heartbeat timeout."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as silence:
            while True:
                silence.reschedule(loop.time() + heartbeat_timeout_s)
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return "socket closed"
                data = message.get("bytes")
                if data is None:
                    raise WireError("a text frame after registration")
                kind, payload, extra = codec.decode_node_message(data)
                if kind is ObjType.TOKEN_PACKS:
                    if extra is not None:
                        pool.record_load(conn, extra)
                    table.deliver(conn, payload)  # checked by decode_node_message
                elif kind is ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS:
                    table.prompt_ids_arrived(conn, payload, extra)
    except TimeoutError:
        reason = "PD heartbeat timed out"
        log.warning("%s node %s: %s", conn.info.mode, conn.info.client_ip_port, reason)
        pool.disconnect(conn, reason)
        with contextlib.suppress(Exception):
            await ws.close(INTERNAL_ERROR, reason)
        return reason
