"""Polls each node's ``/token_load`` so idle nodes' load stays fresh between token frames.

v1.1.0 nodes attach their load to every TOKEN_PACKS frame, but a node with no traffic from
this master sends none, and other masters may be loading it; its HTTP ``/token_load``
(``current_load``) fills that gap. Reports feed ``NodePool.record_load``.

A node speaks only for itself: the poll goes to the IP its websocket comes from (at the
port it registered), never to an address it names, and each poll is bounded in time and
body size, so a node that drips or streams an endless body costs one short poll.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from pdmaster.nodes.pool import NodeConnection, NodePool
from pdwire import jsonlimits
from pdwire.api import decimal

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # LightLLM's answer is a few dozen bytes
MAX_POLL_S = 1.0


class TokenLoadPoller:
    def __init__(self, pool: NodePool, client: httpx.AsyncClient, interval_s: float) -> None:
        self._pool = pool
        self._client = client
        self._interval_s = interval_s
        self._timeout_s = min(interval_s, MAX_POLL_S)

    async def run(self) -> None:
        while True:
            nodes = self._pool.nodes()
            if nodes:
                await asyncio.gather(*(self._poll(n) for n in nodes))
            await asyncio.sleep(self._interval_s)

    async def _poll(self, node: NodeConnection) -> None:
        url = poll_url(node)
        if url is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                body = await self._get(url)
            load = jsonlimits.loads(body, max_bytes=MAX_BODY_BYTES).get("current_load")
        except (TimeoutError, httpx.HTTPError, jsonlimits.JsonRefused, AttributeError):
            return  # the node's own socket tells the pool if it is gone
        if load is not None and not node.closed:
            self._pool.record_load(node, {"total_token_usage_rate": load})

    async def _get(self, url: str) -> bytes:
        async with self._client.stream("GET", url) as reply:
            if reply.status_code != 200:
                return b"null"
            chunks, size = [], 0
            async for chunk in reply.aiter_raw():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise jsonlimits.JsonTooLarge(f"body over {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)


def poll_url(node: NodeConnection) -> str | None:
    """``/token_load`` at the node's socket address and registered port (None: no port)."""
    port = decimal(node.info.client_ip_port.rpartition(":")[2], 5)
    if port is None or not 0 < port < 65536:
        return None
    host = f"[{node.peer_host}]" if ":" in node.peer_host else node.peer_host
    return f"http://{host}:{port}/token_load"
