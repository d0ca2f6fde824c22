"""Periodic HTTP probe of the engine's ``/health``.

While the engine is STARTING a 200 tells the process it may become RUNNING. While it is
RUNNING, ``failures`` failed probes in a row (an error status, a refused connection or no
answer within ``timeout_s``: a hung engine) restart it. A probe that began before a
restart says nothing about the new process and is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from node_agents.config import HealthConfig
from node_agents.process import EngineProcess, State

log = logging.getLogger(__name__)

STARTING_INTERVAL_S = 0.5  # probe a starting engine at least this often
PROBED = frozenset({State.STARTING, State.RUNNING})


def health_url(host: str, port: int, path: str) -> str:
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask over loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


class HealthProber:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        config: HealthConfig,
        process: EngineProcess,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self.url = url
        self._config = config
        self._process = process
        self._clock = clock
        self._sleep = sleep
        self.consecutive_failures = 0
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.restarts_requested = 0

    async def probe(self) -> bool:
        try:
            reply = await self._client.get(self.url, timeout=self._config.timeout_s)
        except httpx.TimeoutException:
            self.last_error = f"no answer within {self._config.timeout_s:g} s"
            return False
        except httpx.HTTPError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if reply.status_code != 200:
            self.last_error = f"HTTP {reply.status_code}"
            return False
        return True

    async def step(self) -> None:
        """One probe, and what it means for the engine."""
        state, pid = self._process.state, self._process.pid
        if state not in PROBED:
            self.consecutive_failures = 0
            self.last_error = None  # about an engine that is gone
            return
        ok = await self.probe()
        if (self._process.state, self._process.pid) != (state, pid):
            return  # the engine changed while we waited: this answer is about the old one
        if ok:
            self.consecutive_failures = 0
            self.last_error = None
            self.last_ok_at = self._clock()
            self._process.note_health(True)
            return
        if state is State.STARTING:
            return  # a loading engine may not answer yet; startup_timeout_s covers it
        self.consecutive_failures += 1
        if self.consecutive_failures >= self._config.failures:
            self.consecutive_failures = 0
            self.restarts_requested += 1
            reason = f"{self._config.failures} health probes failed in a row ({self.last_error})"
            log.warning("restarting the engine: %s", reason)
            self._process.restart(reason)

    async def run(self) -> None:
        while True:
            await self.step()
            interval = self._config.interval_s
            if self._process.state is State.STARTING:
                interval = min(interval, STARTING_INTERVAL_S)
            await self._sleep(interval)

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "consecutive_failures": self.consecutive_failures,
            "last_ok_at": self.last_ok_at,
            # an error about an engine that is gone is not news about this one
            "last_error": self.last_error if self._process.state in PROBED else None,
            "restarts_requested": self.restarts_requested,
        }
