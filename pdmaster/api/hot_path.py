"""Streaming endpoints served straight on the ASGI server, outside the framework's layers.

A stream sends one chunk per decode step for as long as it runs; through FastAPI each chunk
would pass every middleware's ``send`` wrapper and a task group per response. Here a stream
costs one disconnect watcher and one ``send`` per chunk, and that ``send`` is made by the
node's reader as the tokens arrive (``chunk_writer``), not by a task woken for each token.
Everything else (and every error before the first chunk, with the same JSON bodies) is the
same as the FastAPI routes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from pdmaster.api.chunk_writer import ChunkWriter
from pdmaster.api.request_id import HEADER, client_request_id
from pdmaster.api.service import RequestRun
from pdmaster.errors import ApiError, Overloaded
from pdwire.lightllm import TokenEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SseEndpoint:
    """How one streaming endpoint opens a run (reads and checks the request) and formats it."""

    open: Callable[[Request], Awaitable[RequestRun]]
    chunk: Callable[[list[TokenEntry]], bytes]
    error_chunk: Callable[[ApiError], bytes]
    trailer: bytes = b""


def error_response(exc: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-type", b"application/json")]
    if isinstance(exc, Overloaded):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    return exc.status, headers, orjson.dumps(exc.body())


class HotPathApp:
    def __init__(self, app: ASGIApp, endpoints: dict[str, SseEndpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope["headers"]) or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode("latin-1")
        try:
            run = await endpoint.open(Request(scope, receive))
        except Exception as exc:
            await _respond_error(send, exc, request_id)
            return
        await _serve(endpoint, run, receive, send, request_id)


async def _respond_error(send: Send, exc: Exception, request_id: bytes) -> None:
    """The JSON error answer; anything but an ApiError is logged, as the app's catch-all does."""
    if not isinstance(exc, ApiError):
        log.exception("request %s: unexpected error", request_id.decode("latin-1"))
        exc = ApiError(f"{type(exc).__name__}: {exc}", code="internal_error")
    status, headers, body = error_response(exc)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (HEADER, request_id)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _serve(
    endpoint: SseEndpoint, run: RequestRun, receive: Receive, send: Send, request_id: bytes
) -> None:
    """Start the run, then stream it; a client that leaves cancels this task, wherever it is.

    A stream's last chunk and the end of the body go out in one write.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    writer = ChunkWriter(endpoint.chunk, send)
    status = "client_closed"
    try:
        try:
            first = await run.start()
        except Exception as exc:  # the run has ended itself
            await _respond_error(send, exc, request_id)
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*headers, (HEADER, request_id)],
            }
        )
        body = endpoint.chunk(first)
        while not run.finished:
            await send({"type": "http.response.body", "body": body, "more_body": True})
            try:
                entries = await run.next(writer)
            except ApiError as exc:
                status = f"stream_{exc.status}"
                await writer.drain()
                body = endpoint.error_chunk(exc)
                break
            await writer.drain()
            body = endpoint.chunk(entries)
        else:
            status = "200"
        await send({"type": "http.response.body", "body": body + endpoint.trailer})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # the client left: end quietly, the ABORTs go out below
    except OSError:
        pass  # the connection broke while writing
    finally:
        watcher.cancel()
        writer.cancel()
        await run.end(status)
