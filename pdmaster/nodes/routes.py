"""The node side of a master: websockets /pd_register and /kv_move_status (LightLLM's protocol).

These frames carry 128-bit node ids, so they are parsed with the json module: orjson turns
integers past 64 bits into floats.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pdmaster.nodes.pool import NodeInfo, NodePool, RegistrationError
from pdmaster.nodes.tracking import RequestTable
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec, ObjType, UpKVStatus

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008


def node_router(
    pool: NodePool, table: RequestTable, codec: LightLLMCodec, registration_timeout_s: float
) -> APIRouter:
    router = APIRouter()

    @router.websocket("/pd_register")
    async def pd_register(ws: WebSocket) -> None:
        await ws.accept()
        try:
            async with asyncio.timeout(registration_timeout_s):
                first = await ws.receive_text()
            info = NodeInfo.from_registration(json.loads(first))
        except (TimeoutError, RegistrationError, json.JSONDecodeError, KeyError) as exc:
            reason = str(exc) or "no registration frame in time"
            log.warning("refused node registration from %s: %s", ws.client, reason)
            await ws.close(POLICY_VIOLATION, reason[:120])
            return
        except WebSocketDisconnect:
            return
        conn = pool.connect(info, ws.send_bytes)
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
        await ws.accept()
        try:
            while True:
                status = UpKVStatus.from_json_dict(json.loads(await ws.receive_text()))
                table.kv_arrived(status)
        except (WireError, json.JSONDecodeError, KeyError) as exc:
            log.warning("bad kv_move_status frame from %s: %s", ws.client, exc)
            await ws.close(POLICY_VIOLATION, str(exc)[:120])
        except WebSocketDisconnect:
            pass

    return router
