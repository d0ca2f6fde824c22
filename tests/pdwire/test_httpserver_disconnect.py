"""The HTTP protocol's disconnect watch: a streaming answer hears of a lost client from
``connection_lost``, without a task of its own. Real uvicorn, real sockets."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from pdwire.httpserver import DISCONNECT_WATCH, HeaderTimeoutProtocol, header_timeout_protocol

REQUEST = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"


class App:
    """/stream starts an answer and waits (till lost); /done answers at once; /late watches
    only after its client has left. All watch."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].strip("/")
        watch: Callable[[Callable[[], None]], Callable[[], None]] = scope["extensions"][
            DISCONNECT_WATCH
        ]
        gone = asyncio.Event()

        def lost() -> None:
            self.lost.append(path)
            gone.set()

        if path == "late":  # the client is gone before the watch begins
            await asyncio.sleep(0.3)
        unwatch = watch(lost)
        if path == "late":
            await asyncio.wait_for(gone.wait(), 5)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if path == "stream":
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            self.started.set()
            await asyncio.wait_for(gone.wait(), 5)
            unwatch()
            return
        await send({"type": "http.response.body", "body": b"ok"})
        unwatch()


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[int]:
    """``app`` under uvicorn with our protocol on 127.0.0.1: its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=header_timeout_protocol(), lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def heard(app: App) -> list[str]:
    """The paths whose client the app heard leave, within 2 s of the first."""
    for _ in range(100):
        if app.lost:
            break
        await asyncio.sleep(0.02)
    return app.lost


def test_a_client_that_leaves_mid_answer_is_heard_once_and_answered_ones_never() -> None:
    async def run() -> None:
        app = App()
        async with serving(app) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(20):  # keep-alive: answered requests, then one left mid-answer
                writer.write(REQUEST % b"done")
                await reader.readuntil(b"ok")
            writer.write(REQUEST % b"stream")
            await asyncio.wait_for(app.started.wait(), 5)
            writer.close()
            assert await heard(app) == ["stream"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST % b"done")
            await reader.readuntil(b"ok")
            writer.close()
            await asyncio.sleep(0.2)
            assert app.lost == ["stream"]  # answered before its connection closed: not lost

    asyncio.run(run())


def test_a_client_gone_before_the_watch_began_is_heard_too() -> None:
    async def run() -> None:
        app = App()
        async with serving(app) as port:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST % b"late")
            await writer.drain()
            writer.close()
            assert await heard(app) == ["late"]

    asyncio.run(run())


def test_a_closed_connection_is_freed_without_the_cycle_collector() -> None:
    """The watch a scope carries holds neither its protocol nor its exchange: a connection
    per request would otherwise leave a reference cycle each, for the collector to find."""

    async def run() -> None:
        app = App()
        async with serving(app) as port:
            for path in (b"done", b"stream"):  # answered, and left mid-answer
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(REQUEST % path)
                await reader.readuntil(b"ok" if path == b"done" else b"x")
                writer.close()
                await writer.wait_closed()
            assert await heard(app) == ["stream"]
            await asyncio.sleep(0.2)  # the server's side of each connection is closed
            assert left_for_the_collector(HeaderTimeoutProtocol) == 0

    gc.collect()
    gc.disable()
    try:
        asyncio.run(run())
    finally:
        gc.enable()


def left_for_the_collector(kind: type) -> int:
    """How many objects of ``kind`` only the cycle collector would free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(isinstance(o, kind) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
