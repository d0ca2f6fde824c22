"""Multi-node instances as a master sees them: one node per rank.

Every rank of a LightLLM multi-node instance (``--nnodes N --node_rank i --nccl_host H``)
runs its own HTTP server and registers with every master as a node of its own, serving its
share of the instance's data-parallel ranks; what ties them is in ``start_args``: the same
``nnodes``, ``nccl_host`` (rank 0's address) and ``nccl_port``. The master routes to each
rank as to any node; these helpers only group them for the admin views.
"""

from __future__ import annotations

from typing import Any

from pdmaster.nodes.pool import NodePool


def instance_of(mode: str, start_args: dict[str, Any]) -> dict[str, Any] | None:
    """``{"id", "nnodes", "node_rank"}`` for a rank of a multi-node instance, else None.
    A peer's values are only read when they have the types LightLLM gives them."""
    nnodes, rank = start_args.get("nnodes"), start_args.get("node_rank")
    host, port = start_args.get("nccl_host"), start_args.get("nccl_port")
    if not (isinstance(nnodes, int) and isinstance(rank, int) and isinstance(port, int)):
        return None
    if any(isinstance(v, bool) for v in (nnodes, rank, port)) or not 1 < nnodes <= 4096:
        return None
    if not isinstance(host, str) or len(host) > 255:
        return None
    return {"id": f"{mode}-{host}:{port}", "nnodes": nnodes, "node_rank": rank}


def instances(pool: NodePool) -> list[dict[str, Any]]:
    """Connected ranks grouped by instance; ``complete`` once every rank is connected."""
    found: dict[str, dict[str, Any]] = {}
    for node in pool.nodes():
        instance = instance_of(node.info.mode, node.info.start_args)
        if instance is None:
            continue
        entry = found.setdefault(
            instance["id"],
            {"id": instance["id"], "role": node.info.mode, "nnodes": instance["nnodes"],
             "ranks": {}},
        )  # fmt: skip
        entry["ranks"][str(instance["node_rank"])] = {
            "node_id": pool.name_of(node),
            "address": node.info.client_ip_port,
            "draining": node.draining,
        }
    for entry in found.values():
        entry["complete"] = len(entry["ranks"]) == entry["nnodes"]
    return sorted(found.values(), key=lambda e: str(e["id"]))
