"""Streaming endpoints served straight on the ASGI server, outside the framework's layers.

A stream sends one chunk per decode step for as long as it runs; through FastAPI each chunk
would pass every middleware's ``send`` wrapper and a task group per response. Here a stream
costs one disconnect watcher and one ``send`` per chunk, and that ``send`` is made by the
node's reader as the tokens arrive (``chunk_writer``), not by a task woken for each token.
Each endpoint brings its own ``StreamEncoder`` per stream (LightLLM's events, OpenAI's
chunks); a request that asks for no stream gets its whole answer from ``open``. Everything
else (and every error before the first chunk, with the endpoint's JSON error bodies) is the
same as the FastAPI routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pdmaster.api.chunk_writer import ChunkWriter, ResponseHeads, StreamEncoder
from pdmaster.api.request_id import HEADER, RequestIds, client_request_id
from pdmaster.api.service import RequestRun
from pdmaster.errors import ApiError, Overloaded
from pdwire.httpserver import DISCONNECT_WATCH

log = logging.getLogger(__name__)


STREAM_HEADERS = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))

Opened = tuple[RequestRun, StreamEncoder] | Response
"""A stream to serve, or a whole answer (a request that asked for no stream)."""


def api_error_body(exc: ApiError) -> dict[str, Any]:
    return exc.body()


@dataclass(frozen=True)
class SseEndpoint:
    """How one streaming endpoint opens a request (reads and checks it) and words errors."""

    open: Callable[[Request], Awaitable[Opened]]
    error_body: Callable[[ApiError], dict[str, Any]] = api_error_body


class MethodNotAllowed(ApiError):
    """A hot-path route asked with another method than POST, worded as the app's 405."""

    status = 405
    type = "method_not_allowed"

    def __init__(self, scope: Scope) -> None:
        route = f"{scope['method']} {scope['path']}"
        super().__init__(f"method not allowed: {route} (allowed: POST)", "method_not_allowed")


def error_response(
    exc: ApiError, body: Callable[[ApiError], dict[str, Any]] = api_error_body
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-type", b"application/json")]
    if isinstance(exc, Overloaded):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    if isinstance(exc, MethodNotAllowed):
        headers.append((b"allow", b"POST"))
    return exc.status, headers, orjson.dumps(body(exc))


class HotPathApp:
    def __init__(self, app: ASGIApp, endpoints: dict[str, SseEndpoint]) -> None:
        self.app = app
        self.endpoints = endpoints
        self.heads = ResponseHeads(known=STREAM_HEADERS)
        self.new_id = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope["headers"]) or self.new_id()
        scope.setdefault("state", {})["request_id"] = request_id.decode("latin-1")
        if scope["method"] != "POST":
            await _respond_error(send, MethodNotAllowed(scope), request_id)
            return
        try:
            opened = await endpoint.open(Request(scope, receive))
        except Exception as exc:
            await _respond_error(send, exc, request_id, endpoint.error_body)
            return
        if isinstance(opened, Response):
            await _respond(send, opened, request_id)
            return
        await _serve(endpoint, *opened, scope, receive, send, request_id, self.heads)


async def _respond(send: Send, response: Response, request_id: bytes) -> None:
    headers = [*response.raw_headers, (HEADER, request_id)]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _respond_error(
    send: Send,
    exc: Exception,
    request_id: bytes,
    error_body: Callable[[ApiError], dict[str, Any]] = api_error_body,
) -> None:
    """The JSON error answer; anything but an ApiError is logged, as the app's catch-all does."""
    if not isinstance(exc, ApiError):
        log.exception("request %s: unexpected error", request_id.decode("latin-1"))
        exc = ApiError(f"{type(exc).__name__}: {exc}", code="internal_error")
    status, headers, body = error_response(exc, error_body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (HEADER, request_id)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _serve(
    endpoint: SseEndpoint,
    run: RequestRun,
    encoder: StreamEncoder,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: bytes,
    heads: ResponseHeads | None = None,
) -> None:
    """Start the run, then stream it; a client that leaves cancels this task, wherever it is.

    A stream's head and first chunk go out in one write, and so do its last chunk and the end
    of the body. An answer that ends before its run (``encoder.done``) ends the run, which
    aborts it on the nodes.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def lost() -> None:
        nonlocal gone
        gone = True
        task.cancel()

    unwatch = _watch_disconnect(scope, receive, lost)
    writer = ChunkWriter(encoder, send)
    lane = run.lane(writer)  # None: every token takes the Python chain
    status = "client_closed"
    try:
        try:
            first = await run.start()
        except Exception as exc:  # the run has ended itself
            await _respond_error(send, exc, request_id, endpoint.error_body)
            return
        head = {
            "type": "http.response.start",
            "status": 200,
            "headers": [*STREAM_HEADERS, (HEADER, request_id)],
        }
        body = encoder.chunk(first)
        del first  # an open stream keeps no entries (the first carries the prompt's token ids)
        if run.finished or encoder.done:
            await send(head)  # the body ends below, with its last send
        else:
            await writer.start(head, body, heads)  # in one write, where the server allows it
            body = b""
        while not (run.finished or encoder.done):
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
                body = b""
            try:
                entries = await run.next(writer, lane)
            except ApiError as exc:
                status = f"stream_{exc.status}"
                await writer.drain()
                body = encoder.error(exc)
                break
            await writer.drain()
            body = writer.take_held() + encoder.chunk(entries)
            del entries
        else:
            status = "200"
            body += encoder.close()
        await send({"type": "http.response.body", "body": body})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # the client left: end quietly, the ABORTs go out below
    except OSError:
        pass  # the connection broke while writing
    finally:
        unwatch()
        writer.cancel()
        await run.end(status)


def _watch_disconnect(
    scope: Scope, receive: Receive, lost: Callable[[], None]
) -> Callable[[], None]:
    """Call ``lost()`` if the client goes; returns the function that stops watching.

    Our HTTP protocol tells from ``connection_lost`` (see ``pdwire.httpserver``); under any
    other server a task waits in ``receive`` for ``http.disconnect``.
    """
    watch = scope.get("extensions", {}).get(DISCONNECT_WATCH)
    if watch is not None:
        unwatch: Callable[[], None] = watch(lost)
        return unwatch

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        lost()

    waiting = asyncio.ensure_future(wait())

    def unwatch_task() -> None:
        waiting.cancel()

    return unwatch_task
