"""The node side of a master: websockets /pd_register and /kv_move_status (LightLLM's protocol).

Each node's LightLLM version is recognised from its registration; its connection keeps that
version's codec. v1.2.0 nodes must send a frame (a token pack, a prompt-id upload or a
heartbeat) at least every ``heartbeat_timeout_s``, as LightLLM's master demands; a silent
one is closed with 1011 and its requests fail at once.

Their JSON frames are read with ``pdwire.jsonlimits`` (bounded size, depth and integers;
128-bit node ids stay exact). Every peer is checked against ``--allow-cidr`` before the
handshake; a node speaks only for itself: its id, while live, is held by the address it
connected from, and a ``kv_move_status`` (v1.1.0's JSON text, v1.2.0's pickled
``PDUpKVStatus``) counts only from the address of the decode node its request was sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pdmaster.nodes.pool import V12, NodeConnection, NodeInfo, NodePool, RegistrationError
from pdmaster.nodes.socket import FRAME_SENDER, MESSAGE_SINK
from pdmaster.nodes.tracking import RequestTable
from pdwire import jsonlimits
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import ObjType, UpKVStatus

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011  # LightLLM closes a silent v1.2.0 node with it
MAX_REGISTRATION_BYTES = 256 * 1024  # LightLLM's are ~3-5 KB (its start_args)
MAX_KV_STATUS_BYTES = 16 * 1024  # ~200 bytes; v1.2.0's ~1 KB (D's transporter descriptor)
MESSAGE_TOO_BIG = 1009


def _closed(ws: WebSocket, path: str, code: int | None) -> str:
    """Why a node's socket closed; an oversized frame (the server's 1009) is logged."""
    if code == MESSAGE_TOO_BIG:
        log.warning("closed %s from %s: a frame larger than --ws_max_size (1009)", path, _peer(ws))
        return "frame larger than --ws_max_size"
    return "socket closed"


def node_router(
    pool: NodePool,
    table: RequestTable,
    codecs: Mapping[str, LightLLMCodec],
    registration_timeout_s: float,
    heartbeat_timeout_s: float,
    allows: Callable[[str | None], bool] = lambda host: True,
) -> APIRouter:
    router = APIRouter()
    accepted = frozenset(codecs)

    @router.websocket("/pd_register")
    async def pd_register(ws: WebSocket) -> None:
        host = await _accept(ws, allows, "/pd_register")
        if host is None:
            return
        try:
            async with asyncio.timeout(registration_timeout_s):
                first = await ws.receive_text()
            frame = jsonlimits.loads(first, max_bytes=MAX_REGISTRATION_BYTES)
            info = NodeInfo.from_registration(frame, accepted)
            conn = pool.connect(info, _sender(ws), host)
        except (TimeoutError, RegistrationError, jsonlimits.JsonRefused, KeyError) as exc:
            reason = str(exc) or "no registration frame in time"
            code = getattr(exc, "close_code", POLICY_VIOLATION)
            log.warning("refused node registration from %s: %s", _peer(ws), reason)
            await ws.close(code, reason[:120])
            return
        except WebSocketDisconnect:
            return
        codec = codecs[info.version]
        reason = "socket closed"
        try:
            if info.version == V12:
                reason = await _serve_v12(ws, conn, codec, pool, table, heartbeat_timeout_s)
            else:
                reason = await _serve(ws, conn, codec, pool, table)
        except WireError as exc:
            reason = f"protocol error: {exc}"
            log.warning("closed /pd_register from %s: %s", _peer(ws), reason)
            await ws.close(POLICY_VIOLATION, reason[:120])
        except WebSocketDisconnect as exc:
            reason = _closed(ws, "/pd_register", exc.code)
        finally:
            pool.disconnect(conn, reason)

    @router.websocket("/kv_move_status")
    async def kv_move_status(ws: WebSocket) -> None:
        host = await _accept(ws, allows, "/kv_move_status")
        if host is None:
            return
        v12 = codecs.get(V12)

        def handle(message: bytes | str) -> None:
            if isinstance(message, bytes) and v12 is not None:  # v1.2.0: a PDUpKVStatus
                if len(message) > MAX_KV_STATUS_BYTES:
                    raise WireError(f"a {len(message)}-byte kv_move_status frame")
                status = v12.decode_kv_status(message)
                group_id = status.group_request_id
                accepted_here = table.kv_reserved(group_id, v12.decode_trans_params(status), host)
            elif isinstance(message, str):
                frame = jsonlimits.loads(message, max_bytes=MAX_KV_STATUS_BYTES)
                kv_status = UpKVStatus.from_json_dict(frame)
                group_id = kv_status.group_request_id
                accepted_here = table.kv_arrived(kv_status, host)
            else:
                raise WireError("a kv_move_status frame of a version not served here")
            if not accepted_here:
                log.warning(
                    "ignored kv_move_status for group %d from %s: not its decode node",
                    group_id,
                    _peer(ws),
                )

        try:
            await _read_messages(ws, "/kv_move_status", handle, None)
        except (WireError, KeyError) as exc:
            log.warning("bad kv_move_status frame from %s: %s", _peer(ws), exc)
            await ws.close(getattr(exc, "close_code", POLICY_VIOLATION), str(exc)[:120])
        except WebSocketDisconnect as exc:
            _closed(ws, "/kv_move_status", exc.code)

    return router


async def _serve(
    ws: WebSocket,
    conn: NodeConnection,
    codec: LightLLMCodec,
    pool: NodePool,
    table: RequestTable,
) -> str:
    """v1.1.0 and fc72ffa: token packs until the socket closes (why it closed)."""

    decode, record_load, deliver = codec.decode_node_message, pool.record_load, table.queue(conn)
    token_packs = ObjType.TOKEN_PACKS  # per frame: a local, not the enum class's attribute

    def handle(data: bytes | str) -> None:
        if isinstance(data, str):
            return  # LightLLM nodes send only binary frames after registering
        kind, payload, load = decode(data)
        if load is not None:
            record_load(conn, load)
        if kind is token_packs:
            deliver(payload)  # checked by decode_node_message

    return await _read_messages(ws, "/pd_register", handle, None, table.hand_over)


async def _serve_v12(
    ws: WebSocket,
    conn: NodeConnection,
    codec: LightLLMCodec,
    pool: NodePool,
    table: RequestTable,
    heartbeat_timeout_s: float,
) -> str:
    """v1.2.0: token packs, prompt-id uploads and heartbeats, each within the heartbeat timeout."""

    decode, record_load, deliver = codec.decode_node_message, pool.record_load, table.queue(conn)
    token_packs = ObjType.TOKEN_PACKS

    def handle(data: bytes | str) -> None:
        if isinstance(data, str):
            raise WireError("a text frame after registration")
        kind, payload, extra = decode(data)
        if kind is token_packs:
            if extra is not None:
                record_load(conn, extra)
            deliver(payload)  # checked by decode_node_message
        elif kind is ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS:
            table.prompt_ids_arrived(conn, payload, extra)

    try:
        return await _read_messages(
            ws, "/pd_register", handle, heartbeat_timeout_s, table.hand_over
        )
    except TimeoutError:
        reason = "PD heartbeat timed out"
        log.warning("%s node %s: %s", conn.info.mode, conn.info.client_ip_port, reason)
        pool.disconnect(conn, reason)
        with contextlib.suppress(Exception):
            await ws.close(INTERNAL_ERROR, reason)
        return reason


async def _read_messages(
    ws: WebSocket,
    path: str,
    handle: Callable[[bytes | str], None],
    silence_s: float | None,
    after: Callable[[], None] | None = None,
) -> str:
    """Give each message to ``handle`` until the socket closes (why it closed); TimeoutError
    if none comes for ``silence_s``. What ``handle`` raises ends the reading. ``after()``:
    once the messages of a read are handled (what they left to do at once).

    Under ``NodeSocketProtocol`` messages are handled as the server reads them (see
    ``socket``); this task only waits for the end.
    """
    register = (ws.scope.get("extensions") or {}).get(MESSAGE_SINK)
    if register is None:
        return await _receive_loop(ws, path, handle, silence_s, after)
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[None] = loop.create_future()
    last = loop.time()
    sink = handle  # per message: no wrapper but where the time of the last one counts
    if silence_s is not None:
        time = loop.time

        def sink(message: bytes | str) -> None:
            nonlocal last
            last = time()
            handle(message)

    def fail(exc: Exception) -> None:  # met by the task below, which closes the socket
        if not failed.done():
            failed.set_exception(exc)

    register(sink, fail, after)
    closed = asyncio.ensure_future(ws.receive())  # the only message left for the queue
    try:
        while True:
            wait = None if silence_s is None else last + silence_s - loop.time()
            if wait is not None and wait <= 0:
                raise TimeoutError
            await asyncio.wait((closed, failed), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                failed.result()
            if closed.done():
                return _closed(ws, path, closed.result().get("code"))
    finally:
        register(None, None)  # the frames still read are dropped
        closed.cancel()
        if not failed.done():
            failed.cancel()


async def _receive_loop(
    ws: WebSocket,
    path: str,
    handle: Callable[[bytes | str], None],
    silence_s: float | None,
    after: Callable[[], None] | None,
) -> str:
    """``_read_messages`` under any other server: each message through the app's queue."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as silence:
        while True:
            if silence_s is not None:
                silence.reschedule(loop.time() + silence_s)
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return _closed(ws, path, message.get("code"))
            data = message.get("bytes")
            handle(data if data is not None else message.get("text") or "")
            if after is not None:
                after()


def _sender(ws: WebSocket) -> Callable[[bytes | bytearray], Awaitable[None]]:
    """How frames go to a node: under ``NodeSocketProtocol`` written by the protocol itself
    while the socket is open (see ``socket``), else (and then) through ``ws.send_bytes``."""

    def send_bytes(data: bytes | bytearray) -> Awaitable[None]:
        return ws.send_bytes(bytes(data))

    wrap = (ws.scope.get("extensions") or {}).get(FRAME_SENDER)
    return send_bytes if wrap is None else wrap(send_bytes)


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
