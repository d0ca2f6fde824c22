"""Streaming endpoints served straight on the ASGI server, outside the framework's layers.

A stream sends one chunk per decode step for as long as it runs; through FastAPI each chunk
would pass every middleware's ``send`` wrapper and a task group per response. Here a stream
costs one disconnect watcher and one ``send`` per chunk. Everything else (and every error
before the first chunk, with the same JSON bodies) is the same as the FastAPI routes.
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

from pdmaster.errors import ApiError, Overloaded
from pdmaster.request_id import HEADER, client_request_id
from pdmaster.service import ClientDisconnected, RequestRun
from pdwire.lightllm import TokenEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SseEndpoint:
    """How one streaming endpoint opens a run and formats its chunks."""

    open: Callable[[Request], Awaitable[tuple[RequestRun, list[TokenEntry]]]]
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
            run, first = await endpoint.open(Request(scope, receive))
        except ClientDisconnected:
            return
        except ApiError as exc:
            await _respond(send, *error_response(exc), request_id)
            return
        except Exception as exc:  # same answer as the app's catch-all handler
            log.exception("request %s: unexpected error", request_id.decode("latin-1"))
            error = ApiError(f"{type(exc).__name__}: {exc}", code="internal_error")
            await _respond(send, *error_response(error), request_id)
            return
        await _stream(endpoint, run, first, receive, send, request_id)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, request_id: bytes
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (HEADER, request_id)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _stream(
    endpoint: SseEndpoint,
    run: RequestRun,
    first: list[TokenEntry],
    receive: Receive,
    send: Send,
    request_id: bytes,
) -> None:
    task = asyncio.current_task()
    assert task is not None
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    status = "client_closed"
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*headers, (HEADER, request_id)],
            }
        )
        await send({"type": "http.response.body", "body": endpoint.chunk(first), "more_body": True})
        while not run.finished:
            try:
                entries = await run.next()
            except ApiError as exc:
                status = f"stream_{exc.status}"
                await send(
                    {
                        "type": "http.response.body",
                        "body": endpoint.error_chunk(exc),
                        "more_body": True,
                    }
                )
                break
            await send(
                {"type": "http.response.body", "body": endpoint.chunk(entries), "more_body": True}
            )
        else:
            status = "200"
        await send({"type": "http.response.body", "body": endpoint.trailer})
    except asyncio.CancelledError:
        if not gone.is_set():
            raise
        task.uncancel()  # the client left: end quietly, the ABORTs go out below
    except OSError:
        pass  # the connection broke while writing
    finally:
        watcher.cancel()
        await run.end(status)
