"""The HTTP protocol every pdctl server runs: uvicorn's httptools protocol with a deadline
for each request's head.

uvicorn times out only idle keep-alive connections: a client that sends part of a request
line or its headers, a byte at a time or not at all, holds its connection (a file
descriptor) forever, and ~1,000 such clients leave a server under ``ulimit -n 1024`` no
descriptor for anyone else (slowloris). Here a request's head must be complete within
``header_timeout_s`` of the connection opening or of the request's first byte; otherwise
the connection is closed. A timeout alone frees descriptors only as fast as it fires, so at
most ``max_pending`` connections (a quarter of the process's descriptor limit) may wait
for their head at once: past that, the peer address with the most connections waiting
loses its oldest one. A real client sends its head in one write right after connecting
and has one or a few waiting at a time, so the slow peer pays, and descriptors stay free
for everyone else. Bodies and streamed answers are not limited.
Usage::

    uvicorn.Config(app, http=header_timeout_protocol(), ...)
"""

from __future__ import annotations

import asyncio
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
MIN_PENDING_HEADS = 64


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s = HEADER_TIMEOUT_S
    max_pending = MIN_PENDING_HEADS
    # the server's connections waiting for a head by peer address, oldest first, and how
    # many in all (one of each per server class: see header_timeout_protocol)
    pending: dict[str, dict[HeaderTimeoutProtocol, None]] = {}
    pending_count = [0]
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
        self.pending.setdefault(self._peer_host, {})[self] = None
        self.pending_count[0] += 1
        if self.pending_count[0] > self.max_pending:
            busiest = max(self.pending.values(), key=len)
            next(iter(busiest))._close_slow("too many connections waiting for a request head")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is None:
            return
        self._head_timer.cancel()
        self._head_timer = None
        waiting = self.pending.get(self._peer_host)
        if waiting is not None and self in waiting:
            del waiting[self]
            self.pending_count[0] -= 1
            if not waiting:
                del self.pending[self._peer_host]

    @property
    def _peer_host(self) -> str:
        return self.client[0] if self.client else ""

    def _head_timed_out(self) -> None:
        self._close_slow(f"no complete request head within {self.header_timeout_s:.0f} s")

    def _close_slow(self, reason: str) -> None:
        self._cancel_head_timer()
        if self.transport is not None and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown peer"
            log.debug("closing the connection from %s: %s", peer, reason)
            self.transport.close()


def header_timeout_protocol(
    seconds: float = HEADER_TIMEOUT_S, max_pending: int | None = None
) -> type[HeaderTimeoutProtocol]:
    """A protocol class for uvicorn's ``http=``, with its own set of pending connections."""
    if max_pending is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = soft if soft != resource.RLIM_INFINITY else 1 << 20
        max_pending = max(MIN_PENDING_HEADS, fds // 4)
    attrs = {
        "header_timeout_s": seconds,
        "max_pending": max_pending,
        "pending": {},
        "pending_count": [0],
    }
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), attrs)
