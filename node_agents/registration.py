"""Keeps the node registered with the config server's ``/v1`` API.

``PUT /v1/nodes/{id}`` registers or renews (idempotent) with the node's address, role,
state and a free-form ``info`` (pid, restarts, GPUs, ports, ...). The registrar renews
every third of the lease, and at once when ``changed()`` is called (every engine state
change), so the config server's listing follows the engine within a round trip. A failed
call is retried after ``retry_s``; the lease simply lapses if the agent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import httpx

from pdwire.api import base_url

log = logging.getLogger(__name__)


class Registrar:
    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        node_id: str,
        ttl_s: float,
        describe: Callable[[], dict[str, Any]],
        token: str | None = None,
        clock: Callable[[], float] | None = None,
        retry_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self.url = f"{base_url(config_server)}/v1/nodes/{node_id}"
        self._ttl_s = ttl_s
        self._describe = describe
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._clock = clock
        self._retry_s = retry_s
        self._timeout_s = timeout_s
        self._changed = asyncio.Event()
        self.registered = False
        self.last_ok_at: float | None = None
        self.last_error: str | None = None

    def changed(self) -> None:
        self._changed.set()

    def body(self) -> dict[str, Any]:
        return {**self._describe(), "ttl_s": self._ttl_s}

    async def register(self) -> bool:
        """One PUT; True when the config server took it."""
        self._changed.clear()
        try:
            reply = await self._client.put(
                self.url, json=self.body(), headers=self._headers, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            return self._failed(f"{type(exc).__name__}: {exc}")
        if reply.status_code != 200:
            return self._failed(f"HTTP {reply.status_code}: {reply.text[:300]}")
        if not self.registered or self.last_error:
            log.info("registered with the config server at %s", self.url)
        self.registered, self.last_error = True, None
        self.last_ok_at = self._clock() if self._clock else None
        return True

    def _failed(self, error: str) -> bool:
        if error != self.last_error:
            log.warning("registration at %s failed: %s", self.url, error)
        self.last_error = error
        return False

    async def run(self) -> None:
        while True:
            ok = await self.register()
            wait = self._ttl_s / 3 if ok else min(self._retry_s, self._ttl_s / 3)
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that arrives as
            # the event is set (a state change at shutdown), and this loop never ends
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    async def deregister(self) -> None:
        try:
            await self._client.delete(self.url, headers=self._headers, timeout=self._timeout_s)
        except httpx.HTTPError as exc:
            log.warning("could not deregister from %s: %s", self.url, exc)
        self.registered = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "registered": self.registered,
            "last_ok_at": self.last_ok_at,
            "last_error": self.last_error,
        }
