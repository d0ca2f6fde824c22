"""NodeSocketProtocol's own sends (FRAME_SENDER) on a real uvicorn server and socket, under
asyncio's loop and uvloop (the master's): what a node reads, ping, pong and close around
them, a node that stops reading and one that vanishes while a send waits."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from pdmaster.errors import NodeFailed
from pdmaster.nodes.pool import NodeInfo, NodePool
from pdmaster.nodes.socket import FRAME_SENDER, Send
from tests.pdmaster.nodes.test_socket import connect, frame, server

FRAME = 20_000  # about a REQ frame
HIGH_WATER = 64 * 1024  # the transports' default write buffer limit, asyncio's and uvloop's

Runner = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


class Master:
    """An ASGI app, the master's side of a node socket: accepts, then sends what the test
    asks through FRAME_SENDER, with the app's own send (counted) as its fallback."""

    def __init__(self) -> None:
        self.send: Send | None = None
        self.close: Callable[[int], Coroutine[Any, Any, None]] | None = None
        self.fallbacks = 0
        self.ended: asyncio.Future[int] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        self.ended = asyncio.get_running_loop().create_future()
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})

        async def fallback(data: bytes) -> None:
            self.fallbacks += 1
            await send({"type": "websocket.send", "bytes": data})

        async def close(code: int) -> None:
            await send({"type": "websocket.close", "code": code})

        self.send = scope["extensions"][FRAME_SENDER](fallback)
        self.close = close
        message = await receive()
        assert message["type"] == "websocket.disconnect"
        self.ended.set_result(message.get("code", 0))

    async def connected(self) -> Send:
        async with asyncio.timeout(5):
            while self.send is None:
                await asyncio.sleep(0.01)
        return self.send


class Node:
    """The node's end, raw: reads frames, answers the server's pings as a node does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pings = 0

    async def read(self) -> tuple[int, bytes]:
        """The next frame other than a ping: (its first byte, its payload)."""
        while True:
            head = await asyncio.wait_for(self.reader.readexactly(2), 5)
            assert not head[1] & 0x80, "a server's frame is never masked"
            n = head[1] & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await asyncio.wait_for(self.reader.readexactly(n), 5)
            if head[0] != 0x89:
                return head[0], payload
            self.pings += 1
            self.writer.write(frame(10, payload))  # the pong

    async def read_binary(self, count: int) -> list[bytes]:
        frames = []
        for _ in range(count):
            first, payload = await self.read()
            assert first == 0x82, f"a final binary frame, no RSV bit: {first:#x}"
            frames.append(payload)
        return frames


def numbered(i: int, size: int = FRAME) -> bytes:
    return i.to_bytes(4, "big") + os.urandom(size - 4)


@pytest.mark.parametrize("run", LOOPS.values(), ids=LOOPS.keys())
def test_frames_arrive_whole_in_order_with_ping_pong_and_close(run: Runner) -> None:
    sizes = [0, 1, 125, 126, FRAME, 65_535, 65_536, 70_000]  # each length encoding's edges
    payloads = [os.urandom(n) for n in sizes]

    async def scenario() -> None:
        app = Master()
        async with server(app, ws_ping_interval=0.05, ws_ping_timeout=5) as (port, _):
            node = Node(*await connect(port))
            send = await app.connected()
            for payload in payloads[:4]:
                await send(payload)
            assert await node.read_binary(4) == payloads[:4]
            node.writer.write(frame(9, b"are you there"))  # a node's own ping
            assert await node.read() == (0x8A, b"are you there")  # its pong
            for payload in payloads[4:]:
                await send(payload)
            assert await node.read_binary(4) == payloads[4:]
            # frames sent back to back in one turn of the loop stay whole and in order
            burst = [numbered(i) for i in range(32)]
            await asyncio.gather(*(send(data) for data in burst))
            assert await node.read_binary(32) == burst
            for i in range(6):  # the server's keepalive pings go on among the frames
                await asyncio.sleep(0.1)
                await send(b"ping time %d" % i)
                assert await node.read_binary(1) == [b"ping time %d" % i]
            assert node.pings >= 2, "the node's pongs were taken"
            assert app.fallbacks == 0, "an open socket's frames are written directly"

            assert app.close is not None and app.ended is not None
            await app.close(1000)
            first, payload = await node.read()
            assert (first, struct.unpack("!H", payload[:2])[0]) == (0x88, 1000)
            with pytest.raises(RuntimeError):  # after a close: uvicorn's own refusal
                await send(b"too late")
            assert app.fallbacks == 1
            node.writer.write(frame(8, struct.pack("!H", 1000)))  # the node's close reply
            assert await asyncio.wait_for(node.reader.read(), 5) == b""  # the server hangs up
            assert await asyncio.wait_for(app.ended, 5) == 1000
            node.writer.close()

    run(scenario())


@pytest.mark.parametrize("run", LOOPS.values(), ids=LOOPS.keys())
def test_a_node_that_stops_reading_makes_sends_wait_then_gets_every_frame(run: Runner) -> None:
    count = 600  # 12 MB: far past what the kernel's socket buffers take

    async def scenario() -> None:
        app = Master()
        async with server(app) as (port, srv):
            node = Node(*await connect(port, rcvbuf=16 * 1024))
            send = await app.connected()
            (protocol,) = srv.server_state.connections
            frames = [numbered(i) for i in range(count)]
            done = 0

            async def sender() -> None:
                nonlocal done
                for data in frames:
                    await send(data)
                    done += 1

            task = asyncio.create_task(sender())
            stalled = await settled(lambda: done)
            assert stalled < count, "the sends never waited for the node"
            buffered = protocol.transport.get_write_buffer_size()
            assert buffered <= HIGH_WATER + FRAME + 10, f"{buffered} bytes buffered in the master"
            await asyncio.sleep(0.5)
            assert done == stalled, "sends went on while the node read nothing"
            assert protocol.transport.get_write_buffer_size() == buffered

            got = await node.read_binary(count)  # the node reads again: every frame, in order
            assert got == frames
            await asyncio.wait_for(task, 5)
            assert app.fallbacks == 0
            node.writer.close()

    run(scenario())


@pytest.mark.parametrize("run", LOOPS.values(), ids=LOOPS.keys())
def test_a_node_gone_while_a_send_waits_fails_that_send_and_the_next(run: Runner) -> None:
    async def scenario() -> None:
        app = Master()
        async with server(app) as (port, _):
            node = Node(*await connect(port, rcvbuf=16 * 1024))
            pool = NodePool(time.monotonic)
            info = NodeInfo(7, "prefill", "127.0.0.1:9000", "127.0.0.1", 42000, {})
            conn = pool.connect(info, await app.connected(), "127.0.0.1")
            sends = 0

            async def sender() -> None:
                nonlocal sends
                for i in range(1000):
                    await conn.send(numbered(i))
                    sends += 1

            task = asyncio.create_task(sender())
            await settled(lambda: sends)
            assert not task.done(), "a send waits on the node"
            sock = node.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            node.writer.transport.abort()  # a reset: the node's host went away
            with pytest.raises(NodeFailed, match="prefill node 127.0.0.1:9000 failed"):
                await asyncio.wait_for(task, 5)
            with pytest.raises(NodeFailed):
                await asyncio.wait_for(conn.send(b"next"), 5)
            assert app.ended is not None
            assert await asyncio.wait_for(app.ended, 5) in (1005, 1006)

    run(scenario())


async def settled(value: Callable[[], int], quiet_s: float = 0.3, limit_s: float = 10) -> int:
    """``value()`` once it has not changed for ``quiet_s``."""
    last, since, start = value(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() - start < limit_s, "still changing"
        await asyncio.sleep(0.02)
        if value() != last:
            last, since = value(), time.monotonic()
    return last
