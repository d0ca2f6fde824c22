"""The admin listing of nodes: agents' records joined with what each master reports.

A master's lease carries ``info.nodes``: the prefill/decode nodes connected to it (name,
LightLLM id, role, address, in-flight requests, draining). The listing uses it twice:

- every node record gets ``info.connected_masters``: the ids of the masters that report a
  connection from its address (plus any the agent itself put there), and
  ``info.in_flight_requests``, the sum of what those masters have running on it;
- a node connected to a master but run without an agent (a LightLLM node started by hand,
  or a simulated engine) still appears, as a record ``registered_via: "master_report"``
  with state CONNECTED (DRAINING when a master drains it), living as long as the
  reporting master's lease.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def joined_nodes(
    nodes: Iterable[dict[str, Any]], masters: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    reports: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for master in masters:
        listed = master.get("info", {}).get("nodes")
        for report in listed if isinstance(listed, list) else []:
            if isinstance(report, dict) and isinstance(report.get("address"), str):
                reports.setdefault(report["address"], []).append((master, report))

    out = []
    for record in nodes:
        found = reports.pop(record["address"], [])
        info = dict(record.get("info") or {})
        own = info.get("connected_masters")
        ids = {str(m) for m in own} if isinstance(own, list) else set()
        info["connected_masters"] = sorted(ids | {master["id"] for master, _ in found})
        if found:  # the node's load as its masters count it
            info["in_flight_requests"] = _in_flight(found)
        out.append({**record, "info": info})
    for address, found in reports.items():
        out.append(_reported_node(address, found))
    return out


def _reported_node(
    address: str, found: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    first_master, first = found[0]
    draining = any(report.get("draining") for _, report in found)
    role = first.get("role")
    info: dict[str, Any] = {
        "connected_masters": sorted(master["id"] for master, _ in found),
        "in_flight_requests": _in_flight(found),
    }
    if isinstance(first.get("lightllm_node_id"), str):  # the node's LightLLM id, per start
        info["lightllm_node_id"] = first["lightllm_node_id"]
    return {
        "id": str(first.get("node_id", address)),
        "kind": "node",
        "address": address,
        "role": role if role in ("prefill", "decode") else None,
        "state": "DRAINING" if draining else "CONNECTED",
        "ttl_s": first_master["ttl_s"],
        "info": info,
        "registered_at": min(m["registered_at"] for m, _ in found),
        "last_heartbeat": max(m["last_heartbeat"] for m, _ in found),
        "lease_expires_at": max(m["lease_expires_at"] for m, _ in found),
        "registered_via": "master_report",
    }


def _in_flight(found: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    total = 0
    for _, report in found:
        value = report.get("in_flight_requests")
        total += value if isinstance(value, int) else 0
    return total
