"""A master's admin API: its nodes, with load and health, and draining them.

A node is named by its id in the config server (its agent's ``node_id``), else
``<role>-<host>-<port>``, the agent's default: ``node_id`` in the listing, in metrics and in
the config server, and it survives engine restarts; the LightLLM node id, random per engine
start, is kept as ``lightllm_node_id``. Drain and undrain take the name, the address or the
LightLLM id.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request

from pdmaster.errors import Conflict, Forbidden, NotFound, Unauthorized
from pdmaster.nodes.instances import instance_of, instances
from pdmaster.nodes.pool import NodeConnection, NodePool


def check_bearer(request: Request, token: str | None) -> None:
    """401 without a bearer token, 403 with a wrong one; open when no token is configured."""
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("this endpoint needs Authorization: Bearer <admin token>")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Forbidden("wrong admin token")


def node_record(pool: NodePool, node: NodeConnection, now: float) -> dict[str, Any]:
    return {
        "node_id": pool.name_of(node),
        "lightllm_node_id": str(node.node_id),
        "role": node.info.mode,
        "address": node.info.client_ip_port,
        "host": node.info.host,
        "lightllm_version": node.info.version,
        "pd_trans_mode": node.info.pd_trans_mode,
        "max_req_total_len": node.info.max_req_total_len,
        "connected_for_s": round(now - node.connected_at, 3),
        "in_flight_requests": node.in_flight,
        "in_flight_tokens": node.in_flight_tokens,
        "reported_usage": pool.reported_usage(node),
        "draining": node.draining,
        "drained_by": pool.drain_source(node),
        "breaker": node.breaker.state.value,
        "instance": instance_of(node.info.mode, node.info.start_args),
    }


def admin_router(pool: NodePool, admin_token: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def find(ref: str) -> NodeConnection:
        found = pool.find(ref)
        if not found:
            raise NotFound(f"node {ref!r} is not connected to this master", code="unknown_node")
        return found[0]

    @router.get("/nodes")
    async def nodes(request: Request, role: str | None = None) -> dict[str, Any]:
        check_bearer(request, admin_token)
        now = pool.now()
        items = [node_record(pool, n, now) for n in pool.nodes() if role in (None, n.info.mode)]
        return {"items": items}

    @router.get("/instances")
    async def multinode_instances(request: Request) -> dict[str, Any]:
        """Multi-node instances: each rank is a node; here they are grouped."""
        check_bearer(request, admin_token)
        return {"items": instances(pool)}

    @router.post("/nodes/{node_id}/drain")
    async def drain(request: Request, node_id: str) -> dict[str, Any]:
        check_bearer(request, admin_token)
        node = find(node_id)
        pool.set_draining(node.info.name, True)
        return node_record(pool, node, pool.now())

    @router.post("/nodes/{node_id}/undrain")
    async def undrain(request: Request, node_id: str) -> dict[str, Any]:
        check_bearer(request, admin_token)
        node = find(node_id)
        pool.set_draining(node.info.name, False)
        if pool.drain_source(node) == "config_server":
            raise Conflict(
                f"node {node.info.name!r} is drained by its node agent through the config "
                "server: undrain it there (POST /undrain on the agent)",
                code="drained_by_agent",
            )
        return node_record(pool, node, pool.now())

    return router
