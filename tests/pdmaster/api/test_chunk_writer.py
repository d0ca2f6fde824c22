from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from pdmaster.api.chunk_writer import ChunkWriter, ResponseHeads, send_now
from pdwire.pd_io import TokenEntry
from pdwire.structs import FinishStatus


@asynccontextmanager
async def serving(app: Any, http: str, access_log: bool = True) -> AsyncIterator[int]:
    """``app`` under a real uvicorn server on 127.0.0.1 (``http``: its HTTP protocol); the port."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=http, log_level="warning", access_log=access_log
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


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


class Texts:
    """A stream encoder writing the tokens' texts; the text "END" completes the answer."""

    def __init__(self) -> None:
        self.done = False

    def chunk(self, entries: list[TokenEntry]) -> bytes:
        if self.done:
            return b""
        self.done = any(e[1] == "END" for e in entries)
        return b"".join(e[1].encode() for e in entries)

    def error(self, exc: object) -> bytes:
        return b"error"

    def close(self) -> bytes:
        return b""


def token(text: str) -> TokenEntry:
    return (8, text, {}, FinishStatus(0))


def test_a_send_that_need_not_wait_is_done_in_the_call() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(Texts(), client.send)
        assert writer([token("a"), token("b")]) and writer([token("c")])
        assert client.bodies == [b"ab", b"c"]
        await writer.drain()

    asyncio.run(run())


def test_a_waiting_send_finishes_in_a_task_and_the_writer_declines_until_then() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(Texts(), client.send)
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
        writer = ChunkWriter(Texts(), client.send)
        client.writable.clear()
        assert writer([token("a")])
        client.writable.set()
        for _ in range(10):  # loop turns, not time: a loaded machine may pause the process
            await asyncio.sleep(0)
        assert writer([token("b")])
        assert client.bodies == [b"a", b"b"]

    asyncio.run(run())


def test_a_send_that_fails_at_once_fails_the_drain() -> None:
    async def run() -> None:
        async def broken(message: dict[str, Any]) -> None:
            raise OSError("connection reset")

        writer = ChunkWriter(Texts(), broken)
        assert writer([token("a")])
        assert not writer([token("b")])
        with pytest.raises(OSError, match="reset"):
            await writer.drain()

    asyncio.run(run())


def test_cancel_ends_a_waiting_send() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(Texts(), client.send)
        client.writable.clear()
        assert writer([token("a")])
        await asyncio.sleep(0)
        writer.cancel()
        await asyncio.sleep(0.01)
        assert client.ended_early and client.bodies == []

    asyncio.run(run())


def test_tokens_that_complete_the_answer_are_held_for_the_streams_task() -> None:
    async def run() -> None:
        client = FakeClient()
        writer = ChunkWriter(Texts(), client.send)
        assert writer([token("a")])
        assert not writer([token("b"), token("END")])  # the task ends the body and the run
        assert not writer([token("c")])
        assert client.bodies == [b"a"] and writer.take_held() == b"bEND"
        assert writer.take_held() == b""

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


@pytest.mark.parametrize(("http", "direct"), [("httptools", True), ("h11", False)])
def test_under_uvicorn_chunks_reach_the_client_framed_as_send_would(
    http: str, direct: bool
) -> None:
    """A real uvicorn server on 127.0.0.1: with httptools chunks skip ``send``; with h11
    they go through it; the client reads the same chunked body either way, and an empty
    chunk does not end it."""

    from benchmark_client.http import Target, stream_post

    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        writer = ChunkWriter(Texts(), send)
        seen.append(writer.direct)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert writer([token("a"), token("b")]) and writer([token("c")])
        assert writer([])  # an empty chunk must not end the body
        await writer.drain()
        await send({"type": "http.response.body", "body": b"end"})

    class Sink:
        body = b""

        def head(self, status: int, headers: dict[str, str]) -> None:
            assert (status, headers["transfer-encoding"]) == (200, "chunked")

        def data(self, body: bytes, now: float, wall: float) -> None:
            self.body += body

    async def run() -> None:
        sink = Sink()
        async with serving(app, http) as port, asyncio.timeout(10):
            await stream_post(Target("127.0.0.1", port, "/"), b"{}", sink)
        assert sink.body == b"abcend"

    asyncio.run(run())
    assert seen == [direct]


@pytest.mark.parametrize("access_log", [True, False])
@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_head_started_with_its_first_chunk_reads_as_two_sends(
    http: str, access_log: bool
) -> None:
    """``start`` writes the head and the first chunk (in one write under httptools); a raw
    client reads the very bytes two ``send``s give, whether the connection is kept alive
    (two answers on it), closed by the client's request, HTTP/1.0, or expects a 100; with
    ``ResponseHeads`` writing the head (no access log) or uvicorn's ``send`` (one)."""
    import re
    import socket

    direct: set[bool] = set()
    heads = ResponseHeads()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive())["more_body"]:
            pass
        head = {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]}
        writer = ChunkWriter(Texts(), send)
        direct.add(writer.direct)
        if scope["path"] == "/start":
            await writer.start(head, b"first", heads)
        else:
            await send(head)
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
        assert writer([token("next")])
        await writer.drain()
        await send({"type": "http.response.body", "body": b"end"})

    def exchange(port: int, path: str, extra: bytes, version: bytes = b"1.1") -> bytes:
        request = b"POST %b HTTP/%b\r\nhost: x\r\ncontent-length: 2\r\n%b\r\n{}" % (
            path.encode(),
            version,
            extra,
        )
        got = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            for answers in range(1, 3 if version == b"1.1" and not extra else 2):
                client.sendall(request)
                while got.count(b"0\r\n\r\n") < answers:
                    data = client.recv(65536)
                    if not data:  # a body the close ends (h11, to HTTP/1.0)
                        return got + b"<closed>"
                    got += data
            client.settimeout(0.2)
            try:
                got += b"<closed>" if client.recv(1) == b"" else b"<more>"
            except TimeoutError:
                got += b"<open>"
        return re.sub(rb"date: [^\r]*", b"date: -", got)

    async def run() -> None:
        cases = [(b"",), (b"connection: close\r\n",), (b"", b"1.0"), (b"expect: 100-continue\r\n",)]
        async with serving(app, http, access_log) as port:
            for case in cases:
                answers = [
                    await asyncio.to_thread(exchange, port, path, *case) for path in ("/start", "/")
                ]
                assert answers[0] == answers[1]
                assert answers[0].count(b"HTTP/1.1 200 OK") == (2 if case == (b"",) else 1)
                assert b"first" in answers[0] and b"next" in answers[0] and b"end" in answers[0]

    asyncio.run(run())
    assert direct == {http == "httptools"}


class Written:
    """A connection's transport, keeping what is written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Flow:
    write_paused = False


OURS = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"abc")]
DEFAULTS = [(b"date", b"Wed, 02 Dec 2026 03:40:00 GMT"), (b"server", b"uvicorn")]


@pytest.mark.parametrize(
    ("headers", "defaults", "state", "written_here"),
    [
        (OURS, DEFAULTS, {}, True),
        (OURS, [], {}, True),
        ([], DEFAULTS, {"keep_alive": False}, True),  # HTTP/1.0, or the client's close
        (OURS, DEFAULTS, {"expect_100_continue": True}, True),
        ([[b"X-Up", b"1"]], DEFAULTS, {}, False),  # a list, not a tuple: left to send
        ([(bytearray(b"x-up"), b"1")], DEFAULTS, {}, False),  # not bytes (nor hashable)
        ([(b"X-Up", b"a\tb")], DEFAULTS, {}, True),  # names lowered; a tab is allowed
        ([(b"bad name", b"1")], DEFAULTS, {}, False),  # send refuses these
        ([(b"x-a", b"1\r\nx-b: 2")], DEFAULTS, {}, False),
        (OURS, [(b"server", b"a\x01")], {}, False),
        ([(b"content-length", b"5")], DEFAULTS, {}, False),  # send reads these
        ([(b"Connection", b"close")], DEFAULTS, {}, False),
        ([(b"transfer-encoding", b"chunked")], DEFAULTS, {}, False),
        (OURS, [(b"connection", b"close")], {}, False),
        (OURS, DEFAULTS, {"access_log": True}, False),  # send logs each head
        (OURS, DEFAULTS, {"method": "HEAD"}, False),
        (OURS, DEFAULTS, {"status": 204}, False),
        (OURS, DEFAULTS, {"status": 304}, False),
        (OURS, DEFAULTS, {"status": 404}, True),
        (OURS, DEFAULTS, {"status": 600}, False),
    ],
)
def test_response_heads_write_what_uvicorns_send_writes_or_leave_it_to_send(
    headers: list[Any],
    defaults: list[tuple[bytes, bytes]],
    state: dict[str, Any],
    written_here: bool,
) -> None:
    """``ResponseHeads.render`` against uvicorn's own ``send`` on two fresh exchanges: the
    same bytes and the same exchange state after, or None and the exchange untouched (then
    ``send`` writes it, or refuses it, its own way)."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    def exchange() -> RequestResponseCycle:
        return RequestResponseCycle(
            {"method": state.get("method", "POST")},  # type: ignore[typeddict-item]
            Written(),  # type: ignore[arg-type]
            Flow(),  # type: ignore[arg-type]
            logging.getLogger("test.error"),
            logging.getLogger("test.access"),
            state.get("access_log", False),
            defaults,
            asyncio.Event(),
            state.get("expect_100_continue", False),
            state.get("keep_alive", True),
            lambda: None,
        )

    message = {
        "type": "http.response.start",
        "status": state.get("status", 200),
        "headers": headers,
    }
    theirs = exchange()
    try:
        asyncio.run(theirs.send(message))  # type: ignore[arg-type]
        refused = None
    except Exception as exc:
        refused = exc
    tuples = [h for h in headers if type(h) is tuple]
    # the app's headers checked on each head, or once, before (then a refused one is not kept)
    for heads in (ResponseHeads(), ResponseHeads(known=tuples)):
        check_renders(heads, exchange, theirs, message, written_here, refused)


def check_renders(
    heads: ResponseHeads,
    exchange: Callable[[], Any],
    theirs: Any,
    message: dict[str, Any],
    written_here: bool,
    refused: Exception | None,
) -> None:
    """``heads.render`` on fresh exchanges writes what uvicorn's ``send`` wrote on
    ``theirs``, or leaves the exchange untouched."""
    ours = exchange()
    untouched = dict(vars(ours))
    for _ in range(2):  # the defaults checked once, then kept
        written = heads.render(ours, message)
        assert (written is not None) == written_here
        if written is None:
            assert vars(ours) == untouched
            continue
        assert refused is None
        assert written == theirs.transport.data  # type: ignore[attr-defined]
        fields = (
            "response_started",
            "waiting_for_100_continue",
            "chunked_encoding",
            "expected_content_length",
            "keep_alive",
            "response_complete",
        )
        assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
        ours = exchange()
