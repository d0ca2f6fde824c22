"""The simulated node's process: HTTP endpoints, engine loops and master links."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI

from node_agents.simengine.decode import DecodeNode
from node_agents.simengine.engine import NodeIdentity, SimNode
from node_agents.simengine.links import MasterLink
from node_agents.simengine.prefill import PrefillNode
from node_agents.simengine.timing import TimingModel
from pdmaster.tokenizer import ModelTokenizer
from pdwire.lightllm import LightLLMCodec


@dataclass(frozen=True)
class MasterAddress:
    master_id: int
    address: str


def build_node(
    identity: NodeIdentity,
    codec: LightLLMCodec,
    tokenizer: ModelTokenizer,
    timing: TimingModel,
    dp: int,
) -> SimNode:
    if identity.mode == "prefill":
        return PrefillNode(identity, codec, tokenizer, timing)
    return DecodeNode(identity, codec, tokenizer, timing, dp=dp)


def create_app(node: SimNode, masters: list[MasterAddress], reconnect_s: float) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = await node.start()
        for master in masters:
            link = MasterLink(
                master.master_id,
                master.address,
                node.identity.registration(),
                node.on_frame,
                node.on_link_lost,
                wants_kv_status=node.identity.mode == "decode",
                reconnect_s=reconnect_s,
            )
            node.links[master.master_id] = link
            tasks.append(asyncio.create_task(link.run(), name=f"link-{master.address}"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="pdctl simulated engine", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/health")
    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/token_load")
    async def token_load() -> dict[str, float]:
        rate = node.kv.usage_rate
        return {"current_load": rate, "logical_max_load": rate, "dynamic_max_load": rate}

    @app.get("/sim/stats")
    async def stats() -> dict[str, object]:
        return {
            **node.stats.as_dict(),
            "kv_used_tokens": node.kv.used,
            "masters_connected": sum(link.connected.is_set() for link in node.links.values()),
        }

    return app
