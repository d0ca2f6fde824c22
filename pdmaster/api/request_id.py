"""X-Request-Id: keep the client's (or make one), return it on every response."""

from __future__ import annotations

import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
MAX_LENGTH = 128


class RequestIdMiddleware:
    """Pure ASGI (no buffering), so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.new_id = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope["headers"]) or self.new_id()
        scope.setdefault("state", {})["request_id"] = request_id.decode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def client_request_id(headers: list[tuple[bytes, Any]]) -> bytes | None:
    for name, value in headers:
        if name == HEADER and 0 < len(value) <= MAX_LENGTH and value.isascii():
            return bytes(value)
    return None


class RequestIds:
    """Random ids as ``uuid.uuid4().hex`` writes them (122 random bits), without building the
    UUID object, which took most of its ~3 us: the random bytes are drawn from the system,
    marked and written in hex ``BATCH`` ids at a time, so an id is a slice of that."""

    BATCH = 256
    __slots__ = ("_pool", "_at")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> bytes:
        at = self._at
        if at == len(self._pool):
            self._pool, at = _hex_ids(self.BATCH), 0
        self._at = at + 32
        return self._pool[at : at + 32]


_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_RFC_4122_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))


def _hex_ids(count: int) -> bytes:
    """``count`` ids, back to back."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_RFC_4122_VARIANT)
    return raw.hex().encode()
