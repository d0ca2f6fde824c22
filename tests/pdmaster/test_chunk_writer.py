from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pdmaster.chunk_writer import ChunkWriter, send_now
from pdwire.lightllm import TokenEntry
from pdwire.structs import FinishStatus


class FakeClient:
    """An ASGI ``send`` that waits while ``writable`` is clear, like a server's flow control."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.ended_early = False

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.writable.wait()
        except BaseException:
            self.ended_early = True
            raise
        self.bodies.append(message["body"])


def chunk(entries: list[TokenEntry]) -> bytes:
    return b"".join(e[1].encode() for e in entries)


def token(text: str) -> TokenEntry:
    return (8, text, {}, FinishStatus(0))


def test_a_send_that_need_not_wait_is_done_in_the_call() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(chunk, client.send)
        assert writer([token("a"), token("b")]) and writer([token("c")])
        assert client.bodies == [b"ab", b"c"]
        await writer.drain()

    asyncio.run(run())


def test_a_waiting_send_finishes_in_a_task_and_the_writer_declines_until_then() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(chunk, client.send)
        client.writable.clear()
        assert writer([token("a")])
        assert not writer([token("b")])  # left to the stream's task, which drains first
        client.writable.set()
        await writer.drain()
        assert client.bodies == [b"a"]
        assert writer([token("c")])
        assert client.bodies == [b"a", b"c"]

    asyncio.run(run())


def test_the_writer_takes_tokens_again_once_a_waiting_send_is_done() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(chunk, client.send)
        client.writable.clear()
        assert writer([token("a")])
        client.writable.set()
        await asyncio.sleep(0.01)
        assert writer([token("b")])
        assert client.bodies == [b"a", b"b"]

    asyncio.run(run())


def test_a_send_that_fails_at_once_fails_the_drain() -> None:
    async def run() -> None:
        async def broken(message: dict[str, Any]) -> None:
            raise OSError("connection reset")

        writer = ChunkWriter(chunk, broken)
        assert writer([token("a")])
        assert not writer([token("b")])
        with pytest.raises(OSError, match="reset"):
            await writer.drain()

    asyncio.run(run())


def test_cancel_ends_a_waiting_send() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(chunk, client.send)
        client.writable.clear()
        assert writer([token("a")])
        await asyncio.sleep(0)
        writer.cancel()
        await asyncio.sleep(0.01)
        assert client.ended_early and client.bodies == []

    asyncio.run(run())


def test_send_now_runs_a_coroutine_to_its_first_wait() -> None:
    async def run() -> None:
        steps: list[str] = []
        gate = asyncio.get_running_loop().create_future()

        async def work() -> None:
            steps.append("before")
            await asyncio.sleep(0)
            steps.append("after a bare yield")
            steps.append(await gate)

        rest = send_now(work())
        assert steps == ["before"] and rest is not None
        await asyncio.sleep(0.01)
        assert steps == ["before", "after a bare yield"]
        gate.set_result("after the future")
        await rest
        assert steps[-1] == "after the future"

    asyncio.run(run())
