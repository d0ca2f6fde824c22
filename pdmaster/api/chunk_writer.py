"""Writing a stream's chunks from the node reader, in its call (see ``tracking``'s sinks).

ASGI's ``send`` is a coroutine; when the client keeps up it never waits (the server writes
to the socket and returns), so the reader can drive it by hand instead of waking the
stream's task. When it must wait, a task finishes it and the stream's task takes over.

Under uvicorn's httptools server, a chunk of a started chunked body is all ``send`` would
write, so it is written to the connection's transport here, in uvicorn's framing, while the
connection is open and not paused (``direct_body``); anything else goes through ``send``.
On a node's step every stream gets a chunk, so the writes are back to back, and that is
about a fifth of each write's cost. A stream's head goes out with its first chunk
(``ChunkWriter.start``): uvicorn's ``send`` writes the head, into a buffer, and the chunk
follows it in the same write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from types import CoroutineType
from typing import Any, Protocol, cast

from starlette.types import Message, Send

from pdmaster.errors import ApiError
from pdwire.pd_io import TokenEntry
from pdwire.sse import http_chunk

try:  # httptools is optional for uvicorn; without it every chunk goes through send
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        RequestResponseCycle,
    )
except ImportError:  # pragma: no cover - the project installs uvicorn[standard]
    RequestResponseCycle = None  # type: ignore[assignment,misc]

_CYCLE_FIELDS = frozenset(
    {
        "transport",
        "flow",
        "chunked_encoding",
        "response_started",
        "response_complete",
        "disconnected",
    }
)


# the headers uvicorn's send reads, not just writes: a head with any of them is left to it
_READ_BY_SEND = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def direct_body(send: Send) -> RequestResponseCycle | None:
    """The uvicorn httptools exchange behind ``send``, if its body may be written directly.

    None for any other server (or a uvicorn whose exchange lacks the fields relied on):
    then every chunk goes through ``send``.
    """
    if RequestResponseCycle is None:
        return None
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle or send != cycle.send:
        return None
    if not vars(cycle).keys() >= _CYCLE_FIELDS:  # its own fields, as uvicorn's __init__ sets
        return None
    if not hasattr(cycle.flow, "write_paused"):
        return None
    return cycle


class StreamEncoder(Protocol):
    """One stream's body from its tokens; made per stream, so it may keep state."""

    @property
    def done(self) -> bool:
        """The answer is complete though the run may not be (an OpenAI stop string)."""
        ...

    def chunk(self, entries: list[TokenEntry]) -> bytes:
        """The body for these tokens (empty if they add nothing yet)."""
        ...

    def error(self, exc: ApiError) -> bytes:
        """The end of a stream that failed after its first chunk."""
        ...

    def close(self) -> bytes:
        """The end of a stream whose run finished, if ``chunk`` has not written it."""
        ...


class ChunkWriter:
    """The sink of a stream: writes tokens as one chunk from the node reader, in its call.

    ``send`` is driven by hand as far as it goes without waiting; when it must wait (the
    client is not reading), the rest runs in a task and the writer declines tokens until it
    is done, so they queue for the stream's task, which ``drain``s before it sends. Tokens
    that complete the answer (``encoder.done``) are declined too, their chunk held for the
    stream's task (``take_held``), which ends the body and the run.

    ``pdmaster/_lane.c`` does what ``__call__`` and ``_write`` do (and reads ``_pending`` and
    ``_held``): change both together.
    """

    __slots__ = ("_encoder", "_send", "_pending", "_cycle", "_held")

    def __init__(self, encoder: StreamEncoder, send: Send) -> None:
        self._encoder = encoder
        self._send = send
        self._pending: asyncio.Future[None] | None = None
        self._cycle = direct_body(send)
        self._held = b""

    @property
    def encoder(self) -> StreamEncoder:
        return self._encoder

    @property
    def cycle(self) -> RequestResponseCycle | None:
        """The uvicorn exchange chunks are written to directly, if any."""
        return self._cycle

    @property
    def direct(self) -> bool:
        """Whether chunks may skip ``send`` (uvicorn's httptools server)."""
        return self._cycle is not None

    async def start(self, head: Message, body: bytes, heads: ResponseHeads | None = None) -> None:
        """Send ``head`` (``http.response.start``), then ``body`` as the body's first chunk.

        Directly, both go out in one write: ``heads`` writes the head as ``send`` would
        where it can; else ``send`` writes it into a buffer in place of the connection (so
        its bytes, checks and state are uvicorn's own), and the head and the chunk are
        written together.
        """
        c = self._cycle
        if c is None or c.response_started or c.disconnected or c.flow.write_paused:
            await self._send(head)  # what send would wait for, or refuse: its own way
        elif heads is not None and (raw := heads.render(c, head)) is not None:
            if body and self._write(body, raw):
                return
            c.transport.write(raw)
        else:
            transport = c.transport
            buffer = _HeadBuffer(transport)
            sending = cast(Coroutine[Any, Any, None], self._send(head))  # the cycle's own
            c.transport = buffer  # type: ignore[assignment]
            try:
                waiting = sending.send(None)
            except StopIteration:
                waiting = None
            finally:
                c.transport = transport
            if waiting is not None:  # a uvicorn whose send waits here: it goes on as sent
                transport.write(buffer.head)
                buffer.head = b""
                await _resume(sending, waiting)
            if body and self._write(body, buffer.head):
                return
            if buffer.head:
                transport.write(buffer.head)
        if body:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

    def _write(self, body: bytes, before: bytes = b"") -> bool:
        """Write ``body`` as a chunk, after ``before``, if ``send`` would write just that."""
        c = self._cycle
        if (
            c is not None
            and c.chunked_encoding
            and c.response_started
            and not c.response_complete
            and not c.disconnected
            and not c.flow.write_paused
        ):
            c.transport.write(before + http_chunk(body) if before else http_chunk(body))
            return True
        return False

    def __call__(self, entries: list[TokenEntry]) -> bool:
        pending = self._pending
        if pending is not None:
            if not pending.done() or pending.cancelled() or pending.exception() is not None:
                return False
            self._pending = None
        encoder = self._encoder
        body = encoder.chunk(entries)
        if encoder.done:
            self._held += body
            return False
        if not body:  # an empty chunk would end the body; uvicorn's send skips it too
            return True
        if self._write(body):  # what uvicorn's send would do for this message
            return True
        message = {"type": "http.response.body", "body": body, "more_body": True}
        self._pending = send_now(self._send(message))
        return True

    def take_held(self) -> bytes:
        """The chunk of tokens declined because they completed the answer."""
        held, self._held = self._held, b""
        return held

    async def drain(self) -> None:
        """Wait for a write this writer left to a task (and raise what it raised)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


class ResponseHeads:
    """Response heads as uvicorn's httptools ``send`` writes them, for ``ChunkWriter.start``.

    ``send`` checks each header of each head against two regular expressions, the server's
    default headers (date, server) among them, about half the cost of a stream's first
    write. Those are a list uvicorn makes anew once a second: here they are checked and
    written once per list. One per app; heads that are not a plain chunked answer (an
    access log to write, a header ``send`` reads or refuses, a HEAD request, a status with
    no body) are left to ``send``. So are the headers in ``known`` (those the app sends on
    every head): each checked and written once, here, not on each head (~0.9 us a header).
    """

    __slots__ = ("_defaults", "_written", "_known")

    def __init__(self, known: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._written: bytes | None = None
        self._known: dict[tuple[bytes, bytes], bytes] = {}
        for header in known:
            line = _line(header)
            if line is not None:
                self._known[header] = line

    def render(self, cycle: RequestResponseCycle, message: Message) -> bytes | None:
        """The head ``cycle.send(message)`` would write, with the state ``send`` would set
        set; None, and nothing set, where ``send`` must write it."""
        status = message["status"]
        if (
            cycle.access_log
            or cycle.chunked_encoding is not None
            or status not in STATUS_LINE
            or status in (204, 304)
            or cycle.scope["method"] == "HEAD"
        ):
            return None
        defaults = cycle.default_headers
        if defaults is not self._defaults:
            self._defaults, self._written = defaults, _written(defaults)
        written = self._written
        if written is None:
            return None
        lines = [STATUS_LINE[status], written]
        known = self._known
        for header in message.get("headers", ()):
            try:
                line = known.get(header) if type(header) is tuple else None
            except TypeError:  # a part that is not hashable (nor bytes: refused below)
                line = None
            if line is None:
                line = _line(header)
                if line is None:
                    return None
            lines.append(line)
        if not cycle.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"transfer-encoding: chunked\r\n\r\n")
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        cycle.chunked_encoding = True
        return b"".join(lines)


def _written(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """``headers`` as ``send`` writes them; None if it would refuse or read one."""
    lines: list[bytes] = []
    for header in headers:
        line = _line(header)
        if line is None:
            return None
        lines.append(line)
    return b"".join(lines)


def _line(header: Any) -> bytes | None:
    """A header as ``send`` writes it; None if it would refuse or read it."""
    if type(header) is not tuple or len(header) != 2:
        return None
    name, value = header
    if (
        type(name) is not bytes
        or type(value) is not bytes
        or HEADER_RE.search(name)
        or HEADER_VALUE_RE.search(value)
    ):
        return None
    name = name.lower()
    if name in _READ_BY_SEND:
        return None
    return b"".join((name, b": ", value, b"\r\n"))


class _HeadBuffer:
    """Stands in for a connection while ``send`` writes a response head: keeps the bytes."""

    __slots__ = ("_transport", "head")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.head = b""

    def write(self, data: bytes) -> None:
        self.head += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def send_now(sending: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``sending`` here until it first waits; None if it finished, else a task for the rest.

    A failure before that is returned as a failed future, for the stream's task to meet.
    """
    if type(sending) is not CoroutineType:  # not an ``async def``: let a task run it
        return asyncio.ensure_future(sending)
    coro: Coroutine[Any, Any, None] = sending
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
