"""The simulated node's process: HTTP endpoints, engine loops and master links."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from node_agents.simengine.decode import DecodeNode
from node_agents.simengine.decode_v12 import DecodeNodeV12
from node_agents.simengine.discovery import MasterDiscovery, MasterSet
from node_agents.simengine.engine import NodeIdentity, SimNode
from node_agents.simengine.faults import Faults
from node_agents.simengine.links import LinkSet
from node_agents.simengine.normal import NormalNode, normal_router
from node_agents.simengine.prefill import PrefillNode
from node_agents.simengine.prefill_v12 import PrefillNodeV12
from node_agents.simengine.rankgroup import RankGroup
from node_agents.simengine.timing import TimingModel
from pdmodel.tokenizer import ModelTokenizer
from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import MAX_FRAME_BYTES
from pdwire.sampling import read
from pdwire.structs import SamplingParamsBase


@dataclass(frozen=True)
class MasterAddress:
    master_id: int
    address: str


def _received(params: SamplingParamsBase | None) -> dict[str, Any] | None:
    """The last REQ's sampling parameters as this node holds them: what the master sent."""
    if params is None:
        return None
    return {**read(params), "stop_sequences": params.stop_token_sequences()}


def build_node(
    identity: NodeIdentity,
    codec: LightLLMCodec,
    tokenizer: ModelTokenizer,
    timing: TimingModel,
    faults: Faults,
    dp: int = 1,
    prefix_cache_tokens: int = 0,
    v12_timeouts: tuple[float, float] = (180.0, 180.0),
) -> SimNode:
    if codec.version == "v1.2.0" and identity.mode != "normal":
        return build_node_v12(
            identity, codec, tokenizer, timing, faults, prefix_cache_tokens, v12_timeouts
        )
    if identity.mode == "prefill":
        return PrefillNode(
            identity, codec, tokenizer, timing, faults, prefix_cache_tokens=prefix_cache_tokens
        )
    if identity.mode == "normal":
        return NormalNode(identity, codec, tokenizer, timing, faults)
    return DecodeNode(identity, codec, tokenizer, timing, faults, dp=dp)


def build_node_v12(
    identity: NodeIdentity,
    codec: LightLLMCodec,
    tokenizer: ModelTokenizer,
    timing: TimingModel,
    faults: Faults,
    prefix_cache_tokens: int,
    timeouts: tuple[float, float],
) -> SimNode:
    max_len = int(identity.start_args.get("max_req_total_len", 16384 + 8192))
    node: PrefillNodeV12 | DecodeNodeV12
    if identity.mode == "prefill":
        node = PrefillNodeV12(
            identity, codec, tokenizer, timing, faults,
            prefix_cache_tokens=prefix_cache_tokens, max_req_total_len=max_len,
        )  # fmt: skip
        node.info_timeout_s = timeouts[0]
    else:
        node = DecodeNodeV12(
            identity, codec, tokenizer, timing, faults,
            prefix_cache_tokens=prefix_cache_tokens, max_req_total_len=max_len,
        )  # fmt: skip
        node.trans_timeout_s = timeouts[1]
    return node


def create_app(
    node: SimNode,
    masters: list[MasterAddress],
    reconnect_s: float,
    config_server: str | None = None,
    config_poll_s: float = 10.0,
    heartbeat_s: float = 15.0,
    group: RankGroup | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> FastAPI:
    """With ``config_server``, the masters come from its ``/registered_objects`` (polled
    every ``config_poll_s``), as a LightLLM node in multi-master mode finds them. A rank of
    a multi-node instance (``group``) serves nothing until all its ranks have met."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if group is not None:
            await group.form()
        tasks = await node.start()
        links = LinkSet(
            node.links,
            node.identity.registration(),
            node.on_frame,
            node.on_link_lost,
            wants_kv_status=node.identity.mode == "decode",
            reconnect_s=reconnect_s,
            heartbeat=node.heartbeat if node.codec.version == "v1.2.0" else None,
            heartbeat_s=heartbeat_s,
            max_frame_bytes=max_frame_bytes,
        )
        await links.update({m.master_id: m.address for m in masters})
        async with contextlib.AsyncExitStack() as stack:
            if config_server is not None:
                client = await stack.enter_async_context(httpx.AsyncClient())

                async def on_change(found: MasterSet) -> None:
                    await links.update({i: m.host_ip_port for i, m in found.items()})

                def connected(master_id: int) -> bool:
                    link = node.links.get(master_id)
                    return link is not None and link.connected.is_set()

                discovery = MasterDiscovery(
                    client, config_server, on_change, interval_s=config_poll_s,
                    is_connected=connected,
                )  # fmt: skip
                await stack.enter_async_context(discovery)
            try:
                yield
            finally:
                if group is not None:
                    await group.close()
                await links.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="pdctl simulated engine", lifespan=lifespan, docs_url=None, redoc_url=None)
    if isinstance(node, NormalNode):
        app.include_router(normal_router(node))

    @app.get("/health")
    @app.get("/healthz")
    async def health() -> dict[str, str]:
        while node.faults.hang:  # a hung engine does not answer its health probe
            await asyncio.sleep(0.1)
        return {"status": "ok"}

    @app.get("/token_load")
    async def token_load() -> dict[str, float]:
        rate = node.kv.usage_rate
        return {"current_load": rate, "logical_max_load": rate, "dynamic_max_load": rate}

    @app.get("/sim/faults")
    async def get_faults() -> dict[str, object]:
        return node.faults.as_dict()

    @app.put("/sim/faults")
    async def set_faults(changes: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
        try:
            node.faults.update(changes)
        except ValueError as exc:
            error = {"type": "invalid_request_error", "code": "invalid_field", "message": str(exc)}
            return JSONResponse({"error": error}, status_code=400)
        return JSONResponse(node.faults.as_dict())

    @app.get("/sim/stats")
    async def stats() -> dict[str, object]:
        cache = getattr(node, "prefix_cache", None)
        return {
            **node.stats.as_dict(),
            "prompt_tokens": cache.prompt_tokens if cache else 0,
            "cached_prompt_tokens": cache.cached_tokens if cache else 0,
            "kv_used_tokens": node.kv.used,
            "last_sampling_params": _received(node.last_params),
            "masters_connected": sum(link.connected.is_set() for link in node.links.values()),
            "masters": {
                str(i): {"address": link.address, "connected": link.connected.is_set()}
                for i, link in node.links.items()
            },
        }

    return app
