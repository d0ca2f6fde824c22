from __future__ import annotations

import asyncio
import os

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from node_agents.simengine.wsdirect import DirectFrames, masked_binary_frame

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 200_000]


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_is_the_one_websockets_writes_with_the_same_key(size: int) -> None:
    data = os.urandom(size)
    theirs = Frame(Opcode.BINARY, data).serialize(mask=True)
    key_at = 2 if size < 126 else 4 if size < 65536 else 10
    key = theirs[key_at : key_at + 4]
    assert masked_binary_frame(data, key) == theirs


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_a_websockets_server_gets_direct_and_library_frames_in_order(
    compression: str | None,
) -> None:
    """Frames written directly, interleaved with the library's own sends (text and binary),
    arrive whole and in order; more frames than one pool of keys; while the transport is
    paused (a slow reader) and once the connection is closed nothing is written directly
    (the library's send waits, or raises); nor with an extension (compression) negotiated."""

    async def scenario() -> None:
        got: list[bytes | str] = []
        done = asyncio.Event()

        async def collect(ws: ServerConnection) -> None:
            async for message in ws:
                got.append(message)
            done.set()

        async with serve(collect, "127.0.0.1", 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            direct = DirectFrames()
            sent: list[bytes | str] = []
            directly = 0
            async with connect(
                f"ws://127.0.0.1:{port}", max_size=None, compression=compression
            ) as ws:
                for i in range(1500):
                    data = os.urandom(SIZES[i % len(SIZES)] if i % 50 == 0 else i % 300)
                    if i % 7 == 0:
                        message: bytes | str = data if i % 2 else f"text {i}"
                        await ws.send(message)
                        sent.append(message)
                    else:
                        if direct.write(ws, data):
                            directly += 1
                        else:
                            await ws.send(data)
                        sent.append(data)
            assert not direct.write(ws, b"after close")
            await asyncio.wait_for(done.wait(), 30)
        assert got == sent
        assert directly > 1000 if compression is None else directly == 0

    asyncio.run(scenario())
