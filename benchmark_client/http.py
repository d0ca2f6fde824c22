"""A minimal HTTP/1.1 client for one streamed POST per connection, parsed as bytes arrive.

The benchmark must not be its own bottleneck, nor count its own work as the server's. A
general client (httpx, with h11 in pure Python) costs more per streamed chunk than the
server being measured, and even asyncio streams wake the request's task for every chunk:
with hundreds of streams ready at once, the last task to run stamps its chunk after all the
others were parsed. Here the response is parsed in the protocol's ``data_received``, and
each read is stamped once, before any parsing: what is recorded is when the bytes reached
this process. The request's task wakes only when the response ends.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit


class HttpError(Exception):
    """The server broke the HTTP protocol or the connection."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://host[:port]/path, got {url!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"--url has a bad port: {url!r}") from None
        return cls(parts.hostname, port, parts.path or "/")


class BodySink(Protocol):
    """What a streamed response is given, in the read that brought it."""

    def head(self, status: int, headers: dict[str, str]) -> None: ...

    def data(self, body: bytes, now: float, wall: float) -> None:
        """``body``: the body bytes this read completed; ``now``/``wall``: when it arrived
        (``time.perf_counter()`` and ``time.time()``)."""


MAX_HEAD = 64 * 1024
_HEAD, _SIZE, _CHUNK, _TRAILER, _SIZED, _TO_CLOSE, _DONE = range(7)


class _Exchange(asyncio.Protocol):
    """One request and its response on one connection (``Connection: close``)."""

    def __init__(self, request: bytes, sink: BodySink, done: asyncio.Future[None]) -> None:
        self._request = request
        self._sink = sink
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._state = _HEAD
        self._left = 0  # bytes still due: of this chunk, or of a sized body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now, wall = time.perf_counter(), time.time()  # on arrival, before parsing
        try:
            self._feed(data, now, wall)
        except HttpError as exc:
            self._finish(exc)
        except ValueError as exc:  # a chunk size or header value that is not a number
            self._finish(HttpError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _TO_CLOSE:
            self._state = _DONE
            self._finish(None)
        elif self._state != _DONE:
            where = "before the headers" if self._state == _HEAD else "inside the body"
            self._finish(HttpError(f"connection closed {where}"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _finish(self, error: Exception | None) -> None:
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
        self.close()

    def _feed(self, data: bytes, now: float, wall: float) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        body: list[bytes] = []
        state = self._state
        while pos < len(buf) or state == _TRAILER:
            if state == _SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                state, self._left = (_CHUNK, size) if size else (_TRAILER, 0)
            elif state == _CHUNK:
                end = pos + self._left
                if len(buf) < end + 2:
                    break
                if buf[end : end + 2] != b"\r\n":
                    raise HttpError("chunk not followed by CRLF")
                body.append(buf[pos:end])
                pos, state = end + 2, _SIZE
            elif state == _TRAILER:  # trailer fields (none expected), then an empty line
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                state = _DONE if end == pos else _TRAILER
                pos = end + 2
                if state == _DONE:
                    break
            elif state == _SIZED:
                piece = buf[pos : pos + self._left]
                body.append(piece)
                pos += len(piece)
                self._left -= len(piece)
                if not self._left:
                    state = _DONE
                    break
            elif state == _TO_CLOSE:
                body.append(buf[pos:])
                pos = len(buf)
            elif state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise HttpError("response headers too long")
                    break
                state = self._head(buf[pos:end])
                pos = end + 4
            else:  # _DONE: bytes after the response end are ignored
                pos = len(buf)
        self._state = state
        self._buf = buf[pos:]
        if body:
            self._sink.data(b"".join(body), now, wall)
        if state == _DONE:
            self._finish(None)

    def _head(self, head: bytes) -> int:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"bad status line {lines[0][:60]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._sink.head(int(parts[1]), headers)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return _SIZE
        if "content-length" in headers:
            self._left = int(headers["content-length"])
            return _SIZED if self._left else _DONE
        return _TO_CLOSE


async def stream_post(
    target: Target, body: bytes, sink: BodySink, headers: dict[str, str] | None = None
) -> None:
    """POST ``body`` and give the response to ``sink`` as it arrives; returns at its end.

    Raises OSError (no connection) or HttpError (a broken response). Cancelling closes the
    connection.
    """
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    _, exchange = await loop.create_connection(
        lambda: _Exchange(request, sink, done), target.host, target.port
    )
    try:
        await done
    finally:
        exchange.close()
