"""Polls each node's ``/token_load`` so idle nodes' load stays fresh between token frames.

v1.1.0 nodes attach their load to every TOKEN_PACKS frame, but a node with no traffic from
this master sends none, and other masters may be loading it; its HTTP ``/token_load``
(``current_load``) fills that gap. Reports feed ``NodePool.record_load``.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from pdmaster.nodes.pool import NodeConnection, NodePool

log = logging.getLogger(__name__)


class TokenLoadPoller:
    def __init__(self, pool: NodePool, client: httpx.AsyncClient, interval_s: float) -> None:
        self._pool = pool
        self._client = client
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            nodes = self._pool.nodes()
            if nodes:
                await asyncio.gather(*(self._poll(n) for n in nodes))
            await asyncio.sleep(self._interval_s)

    async def _poll(self, node: NodeConnection) -> None:
        try:
            r = await self._client.get(f"http://{node.info.client_ip_port}/token_load")
            load = r.json().get("current_load") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return  # the node's own socket tells the pool if it is gone
        if isinstance(load, int | float) and not node.closed:
            self._pool.record_load(node, {"total_token_usage_rate": float(load)})
