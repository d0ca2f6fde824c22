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

A client may open a connection per request, so the waiting connections share one timer
rather than arming one each: they share a timeout, so the oldest deadline is the next.

A connection's addresses (the scope's ``server`` and ``client``) are those uvloop's
transport read when the connection was made: uvicorn reads them again through a
``socket.socket`` each, and under uvloop that took ~4x as long as the rest of
``connection_made``.

It also offers each request a way to hear of a lost connection without a task: the scope
extension ``DISCONNECT_WATCH``, ``watch(callback) -> unwatch``, calls ``callback()`` (once,
from ``connection_lost``) if the connection goes before the response is complete. A streaming
answer would otherwise keep a task waiting in ``receive`` for ``http.disconnect``: a task, two
coroutines and a future per open stream.

Usage::

    uvicorn.Config(app, http=header_timeout_protocol(), ...)
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Literal
from weakref import ref

import httptools
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

try:
    import uvloop.loop
except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop where it runs
    _UVLOOP_TCP: type | None = None
else:
    _UVLOOP_TCP = getattr(uvloop.loop, "TCPTransport", None)

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
MIN_PENDING_HEADS = 64
DISCONNECT_WATCH = "pdctl.disconnect_watch"
"""Scope extension: ``watch(callback: () -> None) -> unwatch: () -> None``."""
# a deadline this close is due: the loop's timers fire to the millisecond
_CLOCK_SLACK_S = 0.001
# what uvicorn's HttpToolsProtocol.__init__ sets (0.54): HeaderTimeoutProtocol.__init__ sets them
# itself only while uvicorn's are exactly these
_UVICORN_FIELDS = frozenset(
    "config app loop logger access_logger access_log parser ws_protocol_class root_path"
    " asgi_version limit_concurrency app_state timeout_keep_alive_task timeout_keep_alive"
    " server_state connections tasks transport flow server client scheme pipeline scope"
    " headers expect_100_continue cycle".split()
)


class HeadWaits:
    """One server's connections waiting for a request head: by deadline, oldest first (one
    timeout for all, so that is the order they were added in), and by peer address."""

    def __init__(self, timeout_s: float, max_pending: int) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.deadlines: dict[HeaderTimeoutProtocol, float] = {}
        self.by_peer: dict[str, dict[HeaderTimeoutProtocol, None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, conn: HeaderTimeoutProtocol, peer: str, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() + self.timeout_s
        self.deadlines[conn] = deadline
        waiting = self.by_peer.get(peer)
        if waiting is None:
            waiting = self.by_peer[peer] = {}
        waiting[conn] = None
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        if len(self.deadlines) > self.max_pending:
            busiest = max(self.by_peer.values(), key=len)
            next(iter(busiest))._close_slow("too many connections waiting for a request head")

    def discard(self, conn: HeaderTimeoutProtocol, peer: str) -> None:
        if self.deadlines.pop(conn, None) is None:
            return
        waiting = self.by_peer[peer]
        del waiting[conn]
        if not waiting:
            del self.by_peer[peer]

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due = loop.time() + _CLOCK_SLACK_S
        while self.deadlines:
            conn, deadline = next(iter(self.deadlines.items()))
            if deadline > due:
                self._timer = loop.call_at(deadline, self._expire, loop)
                return
            conn._head_timed_out()  # which discards it


class HeaderTimeoutProtocol(HttpToolsProtocol):
    # the server's connections waiting for a head (one per server class: see
    # header_timeout_protocol)
    head_waits = HeadWaits(HEADER_TIMEOUT_S, MIN_PENDING_HEADS)
    _watchers: dict[RequestResponseCycle, Callable[[], None]] | None = None
    _peer_host = ""  # the client's address, the key of its connections in head_waits
    # what uvicorn's __init__ derives from a server's config, and the config: see __init__
    _derived: tuple[Config, Any, logging.Logger, logging.Logger, tuple[Any, ...]] | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's __init__ derives the same fields from the same config for every connection
        # (two logging.getLogger calls, each under logging's lock, among them); a client may
        # open a connection per request. Here they are derived once per config and set in
        # uvicorn's order (the instances keep sharing their dicts' keys).
        derived = type(self)._derived
        if derived is None or derived[0] is not config:
            super().__init__(config, server_state, app_state, _loop)
            if vars(self).keys() == _UVICORN_FIELDS:  # else another uvicorn: its own each time
                type(self)._derived = (
                    config,
                    self.app,
                    self.logger,
                    self.access_logger,
                    (self.ws_protocol_class, self.root_path, self.asgi_version),
                )
            return
        self.config = config
        self.app = derived[1]
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = derived[2]
        self.access_logger = derived[3]
        self.access_log = self.access_logger.hasHandlers()  # as uvicorn: logging may change
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # pragma: no cover - httptools < 0.6.3, as uvicorn
            pass
        self.ws_protocol_class, self.root_path, self.asgi_version = derived[4]
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task = None
        self.timeout_keep_alive = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport = None  # type: ignore[assignment]
        self.flow = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None
        self.pipeline = deque()
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]
        self.expect_100_continue = False
        self.cycle = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's own, but for the addresses and the scheme (see connection_info())
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server, self.client, self.scheme = connection_info(transport)
        self._peer_host = self.client[0] if self.client else ""
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self.head_waits.add(self, self._peer_host, self.loop)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self not in self.head_waits.deadlines:
            self.head_waits.add(self, self._peer_host, self.loop)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not a websocket upgrade
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            # by weak references: the scope (which the protocol and the exchange hold) must
            # not hold them back, or every connection would be a reference cycle, left for
            # the cycle collector to free (~20 ms a run, every few hundred requests)
            extensions[DISCONNECT_WATCH] = partial(_watch, ref(self), ref(cycle))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
        watchers, self._watchers = self._watchers, None
        for cycle, callback in (watchers or {}).items():
            if cycle.disconnected:  # lost before its response completed
                try:
                    callback()
                except Exception:
                    log.exception("a disconnect callback failed")

    def _watch(
        self, cycle: RequestResponseCycle, callback: Callable[[], None]
    ) -> Callable[[], None]:
        if self._watchers is None:
            self._watchers = {}
        elif self._watchers:  # answered: a keep-alive connection keeps no old ones
            for done in [c for c in self._watchers if c.response_complete]:
                del self._watchers[done]
        if cycle.disconnected:  # gone before the watch began: tell at once, as receive() would
            self.loop.call_soon(callback)
            return _nothing
        self._watchers[cycle] = callback
        if self.flow is not None:  # as receive() does: a paused socket would not see the EOF
            self.flow.resume_reading()

        def unwatch() -> None:
            if self._watchers is not None and self._watchers.get(cycle) is callback:
                del self._watchers[cycle]

        return unwatch

    def _cancel_head_timer(self) -> None:
        self.head_waits.discard(self, self._peer_host)

    def _head_timed_out(self) -> None:
        self._close_slow(f"no complete request head within {self.head_waits.timeout_s:.0f} s")

    def _close_slow(self, reason: str) -> None:
        self._cancel_head_timer()
        if self.transport is not None and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown peer"
            log.debug("closing the connection from %s: %s", peer, reason)
            self.transport.close()


def _watch(
    protocol: Callable[[], HeaderTimeoutProtocol | None],
    cycle: Callable[[], RequestResponseCycle | None],
    callback: Callable[[], None],
) -> Callable[[], None]:
    """The ``DISCONNECT_WATCH`` of an exchange: a request's app holds its exchange (through
    ``send``), whose ``on_response`` holds the protocol, so both live while it may watch."""
    conn, exchange = protocol(), cycle()
    if conn is None or exchange is None:  # pragma: no cover - see above
        callback()
        return _nothing
    return conn._watch(exchange, callback)


def connection_info(
    transport: asyncio.Transport,
) -> tuple[tuple[str, int | None] | None, tuple[str, int] | None, Literal["http", "https"]]:
    """uvicorn's ``(get_local_addr(transport), get_remote_addr(transport), scheme)``.

    uvicorn reads the addresses through the transport's socket; a uvloop TCP transport has
    read both already (as asyncio's transports do, when the connection was made) and gives
    them from memory, where its socket makes a ``socket.socket`` and a system call for each
    (and one more for the socket itself). Nor is it ever TLS: uvloop hands a TLS connection's
    protocol a transport of its TLS layer.
    """
    if type(transport) is _UVLOOP_TCP:
        local = transport.get_extra_info("sockname")
        remote = transport.get_extra_info("peername")
        if type(local) is tuple and type(remote) is tuple:
            return (str(local[0]), int(local[1])), (str(remote[0]), int(remote[1])), "http"
    scheme: Literal["http", "https"] = "https" if is_ssl(transport) else "http"
    return get_local_addr(transport), get_remote_addr(transport), scheme


def header_timeout_protocol(
    seconds: float = HEADER_TIMEOUT_S, max_pending: int | None = None
) -> type[HeaderTimeoutProtocol]:
    """A protocol class for uvicorn's ``http=``, with its own set of pending connections."""
    if max_pending is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = soft if soft != resource.RLIM_INFINITY else 1 << 20
        max_pending = max(MIN_PENDING_HEADS, fds // 4)
    attrs = {"head_waits": HeadWaits(seconds, max_pending)}
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), attrs)


def _nothing() -> None:
    """The unwatch of a watch that has already called back."""
