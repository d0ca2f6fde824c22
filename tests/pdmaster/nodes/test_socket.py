"""NodeSocketProtocol on a real uvicorn server and socket: what a sink reads, in order, and
what the server still refuses, with a client writing raw frames split at any byte."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from pdmaster.nodes.socket import MESSAGE_SINK, NodeSocketProtocol

MAX_SIZE = 200_000


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Recorder:
    """An ASGI app: accepts, takes its first message through ``receive``, then a sink."""

    def __init__(self) -> None:
        self.messages: list[bytes | str] = []
        self.closed: asyncio.Future[int] | None = None
        self.had_sink = False

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        assert scope["type"] == "websocket"
        self.closed = asyncio.get_running_loop().create_future()
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        first = await receive()
        self.messages.append(first.get("text") or first["bytes"])
        register = scope["extensions"].get(MESSAGE_SINK)
        self.had_sink = register is not None
        register(self.messages.append, None)
        while (message := await receive())["type"] != "websocket.disconnect":
            raise AssertionError(f"a message past the sink: {message}")
        self.closed.set_result(message.get("code", 0))


@asynccontextmanager
async def server(app: Any, **options: Any) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """``app`` served with NodeSocketProtocol on 127.0.0.1: its port and the server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        ws=NodeSocketProtocol,
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="off",
        **options,
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1], srv
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


async def connect(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw websocket client on /pd_register; ``rcvbuf`` caps its socket's receive buffer."""
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting: the window is agreed then
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /pd_register HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


async def write_split(writer: asyncio.StreamWriter, data: bytes, cuts: list[int]) -> None:
    """Write ``data`` in pieces cut at ``cuts``, each read by the server on its own."""
    at = 0
    for cut in [*cuts, len(data)]:
        writer.write(data[at:cut])
        await writer.drain()
        await asyncio.sleep(0.01)
        at = cut


def test_a_sink_gets_every_message_in_order_however_the_frames_are_cut() -> None:
    big = os.urandom(70_000)  # a 64-bit length
    mid = os.urandom(300)  # a 16-bit length
    sent: list[bytes | str] = ["register", b"queued before the sink", b"one", mid, "text", big]
    sent.append(b"fragment one, fragment two")

    async def run() -> None:
        app = Recorder()
        async with server(app, ws_max_size=MAX_SIZE) as (port, _):
            reader, writer = await connect(port)
            # the first two in one write: the second is queued before the app takes a sink
            writer.write(frame(1, b"register") + frame(2, b"queued before the sink"))
            await asyncio.sleep(0.2)
            stream = frame(2, b"one") + frame(2, mid) + frame(1, b"text") + frame(2, big)
            await write_split(writer, stream, [1, 3, 7, 12, 20, 400, 401, 405, 1000, 50_000])
            fragmented = (
                frame(2, b"fragment one, ", fin=False)
                + frame(9, b"are you there")  # a ping between the fragments
                + frame(0, b"fragment two")
            )
            await write_split(writer, fragmented, [5, 21, 25, 40])
            assert await read_frame(reader) == (10, b"are you there")  # the pong
            writer.write(frame(8, struct.pack("!H", 1000)))
            await writer.drain()
            assert app.closed is not None
            assert await asyncio.wait_for(app.closed, 5) == 1000
            writer.close()
        assert app.had_sink
        assert app.messages == sent

    asyncio.run(run())


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(2, b"x" * (MAX_SIZE + 1))[:20], 1009),  # past the size limit: its head is enough
        (frame(2, b"not masked", mask=False), 1002),
        (bytes([0xC2]) + frame(2, b"reserved bit set")[1:], 1002),
        (frame(1, b"\xff\xfe not utf-8"), 1007),
    ],
    ids=["too big", "unmasked", "reserved bit", "text not utf-8"],
)
def test_what_the_parser_refused_is_still_refused_with_a_sink(bad: bytes, code: int) -> None:
    async def run() -> None:
        app = Recorder()
        async with server(app, ws_max_size=MAX_SIZE) as (port, _):
            reader, writer = await connect(port)
            writer.write(frame(1, b"register"))
            await asyncio.sleep(0.2)
            await write_split(writer, frame(2, b"fine") + bad, [3, 9])
            opcode, payload = await read_frame(reader)
            assert (opcode, struct.unpack("!H", payload[:2])[0]) == (8, code)
            assert app.closed is not None
            assert await asyncio.wait_for(app.closed, 5) == code
            writer.close()
        assert app.messages == ["register", b"fine"]

    asyncio.run(run())


class Failing:
    """An ASGI app whose sink raises on b"bad": its failure callback is told once, and the
    sink gets nothing after; once it stops taking (``take(None, None)``) nothing either."""

    def __init__(self) -> None:
        self.messages: list[bytes | str] = []
        self.failures: list[Exception] = []
        self.stop = asyncio.Event()
        self.stopped: asyncio.Future[None] | None = None

    def sink(self, message: bytes | str) -> None:
        self.messages.append(message)
        if message == b"bad":
            raise ValueError("bad")

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        self.stopped = asyncio.get_running_loop().create_future()
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        take = scope["extensions"][MESSAGE_SINK]
        take(self.sink, self.failures.append)
        await self.stop.wait()
        take(None, None)
        self.stopped.set_result(None)
        while (await receive())["type"] != "websocket.disconnect":
            raise AssertionError("a message past the sink")


def test_a_sink_that_raises_is_told_once_and_gets_no_more() -> None:
    async def run() -> None:
        app = Failing()
        async with server(app, ws_max_size=MAX_SIZE) as (port, _):
            _, writer = await connect(port)
            for body in (b"one", b"bad", b"after", b"bad"):
                writer.write(frame(2, body))
            await writer.drain()
            await asyncio.sleep(0.2)
            assert app.messages == [b"one", b"bad"]
            assert [str(e) for e in app.failures] == ["bad"]
            app.stop.set()
            writer.close()
        app = Failing()
        async with server(app, ws_max_size=MAX_SIZE) as (port, _):
            _, writer = await connect(port)
            writer.write(frame(2, b"one"))
            await writer.drain()
            await asyncio.sleep(0.1)
            app.stop.set()
            assert app.stopped is not None
            await asyncio.wait_for(app.stopped, 5)
            writer.write(frame(2, b"bad") + frame(1, b"text"))
            await writer.drain()
            await asyncio.sleep(0.2)
            assert app.messages == [b"one"] and not app.failures
            writer.close()

    asyncio.run(run())


class AfterReads:
    """An ASGI app taking messages with a ``read()`` callback, which records how many it had
    each time; its first call raises."""

    def __init__(self) -> None:
        self.messages: list[bytes | str] = []
        self.reads: list[int] = []
        self.stop = asyncio.Event()

    def read(self) -> None:
        self.reads.append(len(self.messages))
        if len(self.reads) == 1:
            raise RuntimeError("the first read() fails")

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        take = scope["extensions"][MESSAGE_SINK]
        take(self.messages.append, None, self.read)
        await self.stop.wait()
        take(None, None)
        while (await receive())["type"] != "websocket.disconnect":
            raise AssertionError("a message past the sink")


def test_read_is_called_once_the_messages_of_a_read_are_given() -> None:
    """The app's ``read()`` comes after the messages each read gave (what it left to do for
    them at once); one that raises is logged and the socket is read on."""

    async def run() -> None:
        app = AfterReads()
        async with server(app, ws_max_size=MAX_SIZE) as (port, _):
            _, writer = await connect(port)
            writer.write(frame(2, b"one") + frame(2, b"two") + frame(1, b"three"))
            await writer.drain()
            await asyncio.sleep(0.2)
            assert app.messages == [b"one", b"two", "three"]
            assert app.reads and app.reads[-1] == 3
            await write_split(writer, frame(2, b"four"), [3, 5])  # a frame over three reads
            await asyncio.sleep(0.2)
            assert app.messages == [b"one", b"two", "three", b"four"]
            assert app.reads[-1] == 4 and app.reads == sorted(app.reads)
            app.stop.set()
            writer.close()

    asyncio.run(run())
