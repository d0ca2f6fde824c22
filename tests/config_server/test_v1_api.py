"""Our /v1 API on a real server process: leases, the admin listing, the watch, bad input."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pdlocal.cluster import wait_until
from pdlocal.registry import ConfigServer
from tests.config_server.helpers import (
    http,
    ids,
    items,
    node_body,
    put,
    registered_objects,
    snapshot,
)


@pytest.fixture
def server(memory_server: ConfigServer) -> ConfigServer:
    """The module's server, with every registration a test made removed afterwards."""
    yield memory_server
    for plural in ("masters", "nodes"):
        for record_id in ids(memory_server.url, plural):
            http().delete(f"{memory_server.url}/v1/{plural}/{record_id}")


def test_put_registers_then_renews_the_same_record(server: ConfigServer) -> None:
    body = node_body(info={"pid": 42, "connected_masters": ["7"], "load": 0.25})
    first = put(server.url, "nodes", "1234", body)
    assert first.status_code == 200
    record = first.json()
    assert record["id"] == "1234" and record["kind"] == "node"
    assert record["address"] == "127.0.0.2:8019" and record["role"] == "prefill"
    assert record["state"] == "RUNNING" and record["ttl_s"] == 30.0
    assert record["info"] == body["info"]
    assert record["lease_expires_at"] == pytest.approx(record["last_heartbeat"] + 30.0)
    time.sleep(0.01)
    second = put(server.url, "nodes", "1234", {**body, "state": "DRAINING"}).json()
    assert second["registered_at"] == record["registered_at"]
    assert second["last_heartbeat"] > record["last_heartbeat"]
    assert items(server.url, "nodes") == [second]
    assert http().get(f"{server.url}/v1/nodes/1234").json() == second


def test_listing_filters_by_role_state_and_master(server: ConfigServer) -> None:
    put(server.url, "nodes", "p1", node_body("prefill", info={"connected_masters": ["7", "8"]}))
    put(server.url, "nodes", "p2", node_body("prefill", state="BACKOFF"))
    put(server.url, "nodes", "d1", node_body("decode", info={"connected_masters": [8]}))
    listed = {r["id"] for r in items(server.url, "nodes", role="prefill")}
    assert listed == {"p1", "p2"}
    assert [r["id"] for r in items(server.url, "nodes", role="prefill", state="RUNNING")] == ["p1"]
    assert [r["id"] for r in items(server.url, "nodes", state="BACKOFF,FATAL")] == ["p2"]
    assert {r["id"] for r in items(server.url, "nodes", master="8")} == {"p1", "d1"}
    assert [r["id"] for r in items(server.url, "nodes")] == ["p1", "p2", "d1"]  # registration order


def test_masters_with_integer_ids_are_lightllm_masters_too(server: ConfigServer) -> None:
    big = str((1 << 127) + 5)
    assert put(server.url, "masters", big, {"address": "10.0.0.5:60011"}).status_code == 200
    assert put(server.url, "masters", "edge-a", {"address": "10.0.0.6:60011"}).status_code == 200
    masters = {r["id"]: r for r in items(server.url, "masters")}
    assert set(masters) == {big, "edge-a"}
    assert masters[big]["state"] == "serving" and masters[big]["role"] is None
    objs = registered_objects(server.url)
    assert list(objs) == [int(big)]
    assert objs[int(big)].host_ip_port == "10.0.0.5:60011"


def test_delete_deregisters_and_unknown_ids_are_404(server: ConfigServer) -> None:
    put(server.url, "masters", "9", {"address": "10.0.0.9:60011"})
    reply = http().delete(f"{server.url}/v1/masters/9")
    assert reply.status_code == 200
    assert registered_objects(server.url) == {}
    for method, path in [
        ("DELETE", "/v1/masters/9"),
        ("GET", "/v1/masters/9"),
        ("GET", "/v1/nodes/nope"),
    ]:
        reply = http().request(method, server.url + path)
        assert reply.status_code == 404
        assert reply.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("plural", "record_id", "body", "status", "names"),
    [
        ("nodes", "n1", {"address": "127.0.0.2:8019"}, 400, "role"),
        ("nodes", "n1", node_body(role="router"), 400, "role"),
        ("masters", "m1", {"address": "127.0.0.1:60011", "role": "prefill"}, 400, "role"),
        ("nodes", "n1", node_body(address="127.0.0.2"), 400, "address"),
        ("nodes", "n1", node_body(address="127.0.0.2:99999"), 400, "address"),
        ("nodes", "n1", node_body(address="bad host!:80"), 400, "address"),
        ("nodes", "n1", node_body(state="no spaces"), 400, "state"),
        ("nodes", "n1", node_body(ttl_s=0), 400, "ttl_s"),
        ("nodes", "n1", node_body(ttl_s="ten"), 400, "ttl_s"),
        ("nodes", "n1", node_body(info=[1, 2]), 400, "info"),
        ("nodes", "n1", node_body(colour="red"), 400, "colour"),
        ("nodes", "n1", ["not", "an", "object"], 400, "object"),
        ("nodes", "n%24x", node_body(), 400, "id"),
        ("nodes", "n1", node_body(info={"blob": "x" * 100_000}), 413, "limit"),
        (
            "nodes",
            "n1",
            node_body(info={"connected_masters": [2**100]}),
            400,
            "connected_masters.0",
        ),
    ],
)
def test_malformed_registration_is_4xx_and_changes_nothing(
    server: ConfigServer, plural: str, record_id: str, body: Any, status: int, names: str
) -> None:
    before = snapshot(server.url)
    reply = put(server.url, plural, record_id, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"type", "code", "message"}
    assert names in error["message"]
    assert snapshot(server.url) == before


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"address": "10.0.0.1:1", "ttl_s": NaN}', b"\xff\xfe", b"[" * 5000]
)
def test_a_body_that_is_not_json_is_400(server: ConfigServer, body: bytes) -> None:
    reply = http().put(f"{server.url}/v1/masters/m1", content=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "query", ["role=router", "state=no%20spaces", "revision=-1", "timeout_s=1000", "revision=x"]
)
def test_bad_queries_are_400(server: ConfigServer, query: str) -> None:
    path = "/v1/watch" if query.startswith(("revision", "timeout")) else "/v1/nodes"
    reply = http().get(f"{server.url}{path}?{query}")
    assert reply.status_code == 400, reply.text
    assert query.split("=")[0] in reply.json()["error"]["message"]


def test_watch_from_zero_is_a_snapshot(server: ConfigServer) -> None:
    put(server.url, "nodes", "n1", node_body())
    body = snapshot(server.url)
    assert body["reset"] is True
    assert [(e["type"], e["kind"], e["id"]) for e in body["events"]] == [("put", "node", "n1")]
    assert body["events"][0]["record"]["address"] == "127.0.0.2:8019"


def test_watch_long_poll_returns_as_soon_as_something_changes(server: ConfigServer) -> None:
    head = snapshot(server.url)["revision"]
    answer: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        reply = http().get(
            f"{server.url}/v1/watch", params={"revision": head, "timeout_s": 10}, timeout=15
        )
        answer.update(reply.json(), elapsed=time.monotonic() - started)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    put(server.url, "nodes", "late", node_body("decode"))
    poller.join(timeout=15)
    assert answer["elapsed"] < 8  # the change ended it, not its 10 s timeout
    assert answer["reset"] is False and answer["revision"] > head
    assert [(e["type"], e["id"]) for e in answer["events"]] == [("put", "late")]

    http().delete(f"{server.url}/v1/nodes/late")
    after = http().get(f"{server.url}/v1/watch", params={"revision": answer["revision"]}).json()
    assert [(e["type"], e["id"], e["record"]) for e in after["events"]] == [
        ("delete", "late", None)
    ]


def test_watch_times_out_with_no_events(server: ConfigServer) -> None:
    head = snapshot(server.url)["revision"]
    started = time.monotonic()
    reply = http().get(f"{server.url}/v1/watch", params={"revision": head, "timeout_s": 0.3})
    assert 0.25 < time.monotonic() - started < 3
    assert reply.json() == {"revision": head, "events": [], "reset": False}


def test_watch_from_an_unknown_revision_is_a_snapshot(server: ConfigServer) -> None:
    put(server.url, "nodes", "n1", node_body())
    for revision in (1, snapshot(server.url)["revision"] + 1000):
        reply = http().get(f"{server.url}/v1/watch", params={"revision": revision, "timeout_s": 1})
        body = reply.json()
        assert body["reset"] is True and [e["id"] for e in body["events"]] == ["n1"]


def test_a_node_whose_lease_lapses_disappears(server: ConfigServer) -> None:
    head = snapshot(server.url)["revision"]
    started = time.monotonic()  # before the put: the lease cannot start earlier
    put(server.url, "nodes", "short", node_body(ttl_s=1))
    wait_until(lambda: "short" not in ids(server.url, "nodes"), 10, "the lease to lapse")
    assert 1.0 <= time.monotonic() - started < 6  # not early; late only by a loaded machine
    events = http().get(f"{server.url}/v1/watch", params={"revision": head}).json()["events"]
    assert [(e["type"], e["id"]) for e in events] == [("put", "short"), ("delete", "short")]
