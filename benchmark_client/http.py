"""A minimal HTTP/1.1 client for one streamed POST per connection, on asyncio streams.

The benchmark must not be its own bottleneck: a general client (httpx, with h11 in pure
Python) costs more per streamed chunk than the server being measured. This one parses only
what a streaming POST needs: a status line, headers, and a chunked or sized body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
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


class StreamedResponse:
    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader) -> None:
        self.status = status
        self.headers = headers
        self._reader = reader

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._reader
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readline()
                if not size_line:
                    raise HttpError("connection closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readline()
                    return
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in self.headers:
            yield await reader.readexactly(int(self.headers["content-length"]))
        else:
            while data := await reader.read(65536):
                yield data

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


async def post(
    target: Target, body: bytes, headers: dict[str, str] | None = None
) -> tuple[StreamedResponse, asyncio.StreamWriter]:
    """Send one POST; the caller reads the response and closes the writer."""
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 20)
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    status_line = await reader.readline()
    if not status_line.startswith(b"HTTP/1."):
        writer.close()
        raise HttpError(f"bad status line {status_line[:60]!r}")
    status = int(status_line.split()[1])
    response_headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        response_headers[name.strip().lower()] = value.strip()
    return StreamedResponse(status, response_headers, reader), writer
