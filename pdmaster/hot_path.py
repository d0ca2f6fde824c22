"""Streaming endpoints served straight on the ASGI server, outside the framework's layers.

A stream sends one chunk per decode step for as long as it runs; through FastAPI each chunk
would pass every middleware's ``send`` wrapper and a task group per response. Here a stream
costs one disconnect watcher and one ``send`` per chunk, and that ``send`` is made by the
node's reader as the tokens arrive (``ChunkWriter``), not by a task woken for each token.
Everything else (and every error before the first chunk, with the same JSON bodies) is the
same as the FastAPI routes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

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
    writer = ChunkWriter(endpoint.chunk, send)
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
                entries = await run.next(writer)
            except ApiError as exc:
                status = f"stream_{exc.status}"
                await writer.drain()
                await send(
                    {
                        "type": "http.response.body",
                        "body": endpoint.error_chunk(exc),
                        "more_body": True,
                    }
                )
                break
            await writer.drain()
            await send(
                {"type": "http.response.body", "body": endpoint.chunk(entries), "more_body": True}
            )
        else:
            status = "200"
        await writer.drain()
        await send({"type": "http.response.body", "body": endpoint.trailer})
    except asyncio.CancelledError:
        if not gone.is_set():
            raise
        task.uncancel()  # the client left: end quietly, the ABORTs go out below
    except OSError:
        pass  # the connection broke while writing
    finally:
        watcher.cancel()
        writer.cancel()
        await run.end(status)


class ChunkWriter:
    """The sink of a stream: writes tokens as one chunk from the node reader, in its call.

    ``send`` is driven by hand as far as it goes without waiting; when it must wait (the
    client is not reading), the rest runs in a task and the writer declines tokens until it
    is done, so they queue for the stream's task, which ``drain``s before it sends.
    """

    __slots__ = ("_chunk", "_send", "_pending")

    def __init__(self, chunk: Callable[[list[TokenEntry]], bytes], send: Send) -> None:
        self._chunk = chunk
        self._send = send
        self._pending: asyncio.Future[None] | None = None

    def __call__(self, entries: list[TokenEntry]) -> bool:
        pending = self._pending
        if pending is not None:
            if not pending.done() or pending.cancelled() or pending.exception() is not None:
                return False
            self._pending = None
        message = {"type": "http.response.body", "body": self._chunk(entries), "more_body": True}
        self._pending = send_now(self._send(message))
        return True

    async def drain(self) -> None:
        """Wait for a write this writer left to a task (and raise what it raised)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


def send_now(sending: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``sending`` here until it first waits; None if it finished, else a task for the rest.

    A failure before that is returned as a failed future, for the stream's task to meet.
    """
    if not asyncio.iscoroutine(sending):
        return asyncio.ensure_future(sending)
    coro = sending
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    except Exception as exc:
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed
    return asyncio.ensure_future(_resume(coro, waiting))


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Go on with a coroutine started outside any task, stepping it as a task would.

    Each time what it waits for is done, it is sent None and reads the outcome itself.
    """
    try:
        while True:
            if asyncio.isfuture(waiting):
                waiting._asyncio_future_blocking = False
                await asyncio.wait((waiting,))
            else:  # a bare yield: asyncio.sleep(0)
                await asyncio.sleep(0)
            waiting = coro.send(None)
    except StopIteration:
        return
    except asyncio.CancelledError:
        coro.close()
        raise
