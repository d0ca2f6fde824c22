"""One client request's run through the master: admission, PD session, metrics, cleanup.

Route handlers (LightLLM's and OpenAI's) only parse and format; a ``RequestRun`` does the
rest, so every endpoint gets the same queueing, retries, deadlines and accounting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from pdmaster.api.chunk_writer import ChunkWriter
from pdmaster.dispatch.session import PDDispatcher, PDSession, PreparedRequest
from pdmaster.errors import ApiError
from pdmaster.metrics import MasterMetrics
from pdmaster.routing.admission import Admission
from pdwire.pd_io import TokenEntry
from pdwire.sse import COMPILED_CONFIG, compiled_events, http_chunk, sse_events

T = TypeVar("T")

Writer = Callable[[list[TokenEntry]], bool]
"""Writes tokens to the client as they come; False leaves them to ``next``'s caller."""


class ClientDisconnected(Exception):
    """The client went away before the answer started."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it (its cleanup sends the ABORTs) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientDisconnected()
        watcher.cancel()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class GenerateService:
    def __init__(
        self,
        dispatcher: PDDispatcher,
        admission: Admission,
        metrics: MasterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.events = compiled_events()  # for the lanes of LightLLM streams: loaded once

    def run(self, endpoint: str, prepared: PreparedRequest) -> RequestRun:
        return RequestRun(self, endpoint, prepared)


class RequestRun:
    """``start`` (first token), ``next`` until ``finished``, then always ``end``."""

    # slots: one per open stream, for as long as it streams
    __slots__ = ("_s", "_endpoint", "_session", "_admitted", "_ended", "_last", "_sink")

    def __init__(self, service: GenerateService, endpoint: str, prepared: PreparedRequest) -> None:
        self._s = service
        self._endpoint = endpoint
        self._session: PDSession = service.dispatcher.session(prepared)
        self._admitted = False
        self._ended = False
        self._last = 0.0
        self._sink: Writer | None = None

    @property
    def finished(self) -> bool:
        return self._session.finished

    async def start(self, request: Request | None = None) -> list[TokenEntry]:
        """Queue for a slot and get the first token; any failure ends the run.

        With ``request``, a client that leaves meanwhile raises ClientDisconnected; without,
        the caller watches for that itself (and cancels this).
        """
        started = self._s.clock()
        try:
            await self._s.admission.acquire()
            self._admitted = True
            work = self._session.first()
            first = await (work if request is None else until_disconnect(request, work))
        except ApiError as exc:
            await self.end(str(exc.status))
            raise
        except ClientDisconnected:
            await self.end("client_closed")
            raise
        except BaseException:
            await self.end("client_closed")
            raise
        self._last = self._s.clock()
        self._s.metrics.ttft.observe(self._last - started)
        return first

    async def next(
        self, sink: Writer | None = None, lane: object | None = None
    ) -> list[TokenEntry]:
        """The next tokens; meanwhile ``sink`` may take those that end nothing, as they come.

        ``lane`` (from ``lane``, for the ChunkWriter ``sink``): their compiled relay."""
        self._sink = sink
        if sink is None:
            entries = await self._session.next()
        else:
            entries = await self._session.next(self._push, lane)
        self._delivered()
        return entries

    def lane(self, writer: ChunkWriter) -> object | None:
        """The compiled relay of tokens to ``writer`` (``pdmaster/_lane.c``), or None where
        hand-overs are not compiled or the writer's chunks go through ``send``."""
        make = self._s.dispatcher.table.lane_type
        cycle = writer.cycle
        if make is None or cycle is None:
            return None
        encoder = writer.encoder
        events = self._s.events if encoder.chunk is sse_events else None
        session = self._session
        return make(
            session,
            self,
            writer,
            encoder,
            cycle,
            self._s.metrics.itl,
            session.deadline,
            session.idle_timeout,
            events,
            COMPILED_CONFIG,
            http_chunk,
        )

    def _push(self, entries: list[TokenEntry], now: float) -> bool:
        if self._sink is None or not self._sink(entries):
            return False
        self._s.metrics.itl.observe(now - self._last)  # as _delivered: per stream per step
        self._last = now
        return True

    def _delivered(self) -> None:
        now = self._s.clock()
        self._s.metrics.itl.observe(now - self._last)
        self._last = now

    async def run_to_end(
        self,
        request: Request,
        add: Callable[[list[TokenEntry]], object],
        done: Callable[[], bool] = lambda: False,
    ) -> None:
        """Start, feed every batch of tokens to ``add`` until finished (or ``done()``), end."""
        add(await self.start(request))
        status = "client_closed"
        try:
            while not (self.finished or done()):
                add(await until_disconnect(request, self.next()))
            status = "200"
        except ApiError as exc:
            status = str(exc.status)
            raise
        finally:
            await self.end(status)

    async def end(self, status: str) -> None:
        if self._ended:
            return
        self._ended = True
        await self._session.close()
        if self._admitted:
            self._s.admission.release()
        self._s.metrics.count_request(self._endpoint, status)
