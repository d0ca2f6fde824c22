"""The admin listing joins agents' node records with the nodes masters report."""

from __future__ import annotations

from config_server.node_view import joined_nodes


def master(master_id: str, *nodes: dict) -> dict:
    return {
        "id": master_id,
        "kind": "master",
        "ttl_s": 10.0,
        "registered_at": 100.0,
        "last_heartbeat": 105.0 + len(master_id),
        "lease_expires_at": 115.0,
        "info": {"nodes": list(nodes)},
    }


def report(address: str, role: str = "prefill", **extra: object) -> dict:
    return {"node_id": "77", "role": role, "address": address, **extra}


def test_agent_records_learn_which_masters_report_them() -> None:
    agent = {"id": "p0", "kind": "node", "address": "10.0.0.2:8019", "info": {"pid": 5}}
    out = joined_nodes(
        [agent],
        [
            master("m1", report("10.0.0.2:8019", in_flight_requests=4)),
            master("m22", report("10.0.0.2:8019", in_flight_requests="x")),
        ],
    )
    info = {"pid": 5, "connected_masters": ["m1", "m22"], "in_flight_requests": 4}
    assert out == [{**agent, "info": info}]
    assert agent["info"] == {"pid": 5}  # the stored record is not changed


def test_nodes_without_an_agent_are_listed_from_the_masters_reports() -> None:
    out = joined_nodes(
        [],
        [
            master("m1", report("10.0.0.3:8121", "decode", in_flight_requests=2)),
            master("m22", report("10.0.0.3:8121", "decode", in_flight_requests=1, draining=True)),
            master("m3", {"address": 5}, "junk"),
        ],
    )
    assert len(out) == 1
    node = out[0]
    assert (node["id"], node["role"], node["state"]) == ("77", "decode", "DRAINING")
    assert node["registered_via"] == "master_report"
    assert node["info"] == {"connected_masters": ["m1", "m22"], "in_flight_requests": 3}
    assert node["last_heartbeat"] == 108.0
