"""pdwire.httpserver under a real uvicorn server on 127.0.0.1: request heads have a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import uvloop

from pdwire.httpserver import header_timeout_protocol

HEAD = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def serving(seconds: float, max_pending: int, scenario: Callable[[int], Awaitable[None]]) -> None:
    async def run() -> None:
        protocol = header_timeout_protocol(seconds, max_pending)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            async with asyncio.timeout(30):
                await scenario(server.servers[0].sockets[0].getsockname()[1])
        finally:
            server.should_exit = True
            await serving

    asyncio.run(run())


async def answered(reader: asyncio.StreamReader) -> bool:
    """Whether the next answer on the connection is a 200 (read to its end)."""
    answer = await reader.readuntil(b"0\r\n\r\n")
    return answer.startswith(b"HTTP/1.1 200")


async def closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from ``started`` until the server closes the connection (its answers read)."""
    while await reader.read(65536):
        pass
    return time.monotonic() - started


def test_a_head_not_complete_within_the_deadline_closes_its_connection() -> None:
    async def scenario(port: int) -> None:
        started = time.monotonic()
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET / HTTP/1.1\r\nhost: x\r\n")
        whole = await asyncio.open_connection("127.0.0.1", port)
        whole[1].write(HEAD)
        assert await answered(whole[0])
        waits = await asyncio.gather(*(closed_after(c[0], started) for c in (silent, partial)))
        assert all(0.5 <= w < 10 for w in waits)
        # a head that came in time: the connection stays, kept alive for the next request
        whole[1].write(HEAD)
        assert await answered(whole[0])
        for _, writer in (silent, partial, whole):
            writer.close()

    serving(0.5, 64, scenario)


def test_a_kept_alive_connection_has_a_deadline_from_its_next_requests_first_byte() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD)
        assert await answered(reader)
        await asyncio.sleep(0.6)  # idle past a head's deadline: not timed out (no request)
        writer.write(b"G")
        first_byte = time.monotonic()
        waited = await closed_after(reader, first_byte)
        assert 0.5 <= waited < 10
        writer.close()

    serving(0.5, 64, scenario)


def test_past_max_pending_the_peer_with_most_connections_waiting_loses_its_oldest() -> None:
    async def scenario(port: int) -> None:
        greedy = []
        for _ in range(3):
            greedy.append(
                await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            )
            await asyncio.sleep(0.05)  # in this order
        other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
        started = time.monotonic()
        assert await closed_after(greedy[0][0], started) < 5  # at once, not at its deadline
        for reader, writer in [*greedy[1:], other]:  # the rest wait for their heads
            writer.write(HEAD)
            assert await answered(reader)
        for _, writer in [*greedy, other]:
            writer.close()

    serving(10.0, 3, scenario)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_request_scope_has_its_connections_addresses(host: str, loop: str) -> None:
    """As uvicorn gives them, (host, port): under uvloop read by our own way, else uvicorn's."""
    if host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    seen: list[tuple[Any, Any]] = []

    async def addresses_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append((scope["server"], scope["client"]))
            await app(scope, receive, send)

    async def run() -> None:
        config = uvicorn.Config(
            addresses_app, host=host, port=0, http=header_timeout_protocol(), log_level="warning"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            for _ in range(3):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(HEAD)
                assert await answered(reader)
                mine, theirs = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
                assert seen.pop() == ((theirs[0], theirs[1]), (mine[0], mine[1]))
                writer.close()
        finally:
            server.should_exit = True
            await serving

    if loop == "uvloop":
        uvloop.run(run())
    else:
        asyncio.run(run())
