"""Config server replicas on one real etcd: shared answers, failover, etcd restarts, id ranges."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pdlocal.cluster import ProcGroup, free_port, http_ok, wait_until
from pdlocal.registry import ConfigServer, EtcdServer, etcd_binary, start_config_server
from tests.config_server.helpers import (
    http,
    ids,
    node_body,
    put,
    raw_get_json,
    start_fake_master,
)

RANGE = 800_000


def replica(procs: ProcGroup, etcd: EtcdServer, name: str, port: int | None = None) -> ConfigServer:
    return start_config_server(
        procs, "--store", "etcd", "--etcd-endpoints", etcd.endpoint, name=name, port=port
    )


def answers(server: ConfigServer) -> tuple[Any, ...]:
    """What clients see: the admin listings and LightLLM's master list (bytes), without the
    heartbeat times (a websocket master's record is renewed while the test runs)."""

    def records(plural: str) -> list[dict[str, Any]]:
        volatile = ("last_heartbeat", "lease_expires_at")
        items = http().get(f"{server.url}/v1/{plural}").json()["items"]
        return [{k: v for k, v in r.items() if k not in volatile} for r in items]

    return (
        records("nodes"),
        records("masters"),
        http().get(f"{server.url}/registered_objects").json(),
    )


def test_replicas_answer_alike_and_one_survives_the_other(
    etcd: EtcdServer, procs: ProcGroup
) -> None:
    a, b = replica(procs, etcd, "replica_a"), replica(procs, etcd, "replica_b")
    for i in range(5):
        assert put(a.url, "nodes", f"n{i}", node_body(ttl_s=30)).status_code == 200
    assert put(b.url, "masters", "1001", {"address": "10.0.0.1:60011", "ttl_s": 30}).is_success
    start_fake_master(procs, a.address, 1002, "10.0.0.2:60011", "--no-lease")  # LightLLM-style
    wait_until(lambda: ids(b.url, "masters") == {"1001", "1002"}, 10, "B to see both masters")
    wait_until(lambda: answers(a) == answers(b), 5, "both replicas to answer alike")
    before = answers(b)
    assert len(before[0]) == 5

    a.proc.kill(signal.SIGKILL)
    assert answers(b) == before  # the websocket master stays until its lease lapses
    assert put(b.url, "nodes", "n5", node_body(ttl_s=30)).status_code == 200
    assert len(http().get(f"{b.url}/v1/nodes").json()["items"]) == 6


def test_etcd_restart_loses_no_registration_and_the_watch_resumes(
    etcd: EtcdServer, procs: ProcGroup
) -> None:
    a, b = replica(procs, etcd, "replica_a"), replica(procs, etcd, "replica_b")
    for i in range(10):
        assert put(a.url, "nodes", f"n{i}", node_body(ttl_s=60)).status_code == 200
    wait_until(lambda: len(ids(b.url, "nodes")) == 10, 5, "B to see 10 nodes")
    revision = http().get(f"{b.url}/v1/watch?revision=0").json()["revision"]
    first_poll: dict[str, Any] = {}

    def long_poll() -> None:  # a master watching B across the etcd restart
        reply = http().get(f"{b.url}/v1/watch", params={"revision": revision, "timeout_s": 30})
        first_poll.update(reply.json())

    poller = threading.Thread(target=long_poll)
    poller.start()
    etcd.restart()

    def register_again(i: int) -> bool:  # writes fail (503) until the replica reconnects
        return put(a.url, "nodes", f"n{i}", node_body(ttl_s=60)).status_code == 200

    for i in range(10, 15):
        wait_until(lambda i=i: register_again(i), 15, f"n{i} to register after the restart")
    poller.join(timeout=30)
    assert first_poll["reset"] is False
    seen = [e["id"] for e in first_poll["events"]]
    latest = first_poll["revision"]
    for _ in range(10):  # the first answer may hold only the first new registration
        if set(seen) >= {f"n{i}" for i in range(10, 15)}:
            break
        reply = http().get(f"{b.url}/v1/watch", params={"revision": latest, "timeout_s": 5})
        assert reply.json()["reset"] is False
        seen += [e["id"] for e in reply.json()["events"]]
        latest = reply.json()["revision"]
    assert set(seen) == {f"n{i}" for i in range(10, 15)}  # only the new ones: no loss, no reset
    everyone = {f"n{i}" for i in range(15)}
    for server in (a, b):  # A's view, fed only by its watch, resumed too
        wait_until(lambda s=server: ids(s.url, "nodes") == everyone, 5, "15 nodes everywhere")


def test_id_ranges_stay_unique_under_1000_concurrent_allocations_on_two_replicas(
    etcd: EtcdServer, procs: ProcGroup
) -> None:
    a, b = replica(procs, etcd, "replica_a"), replica(procs, etcd, "replica_b")

    async def allocate_all() -> list[dict[str, int]]:
        path = "/allocate_global_unique_id_range"
        return await asyncio.gather(
            *(raw_get_json("127.0.0.1", (a, b)[i % 2].port, path) for i in range(1000))
        )

    started = time.monotonic()
    ranges = sorted(asyncio.run(allocate_all()), key=lambda r: r["start_id"])
    elapsed = time.monotonic() - started
    assert len({r["start_id"] for r in ranges}) == 1000
    assert all(r["end_id"] - r["start_id"] == RANGE for r in ranges)
    assert all(x["end_id"] <= y["start_id"] for x, y in zip(ranges, ranges[1:], strict=False))
    assert elapsed < 20

    a.proc.kill(signal.SIGKILL)  # a restarted replica continues after every range handed out
    assert a.proc.popen is not None
    a.proc.popen.wait(5)
    a = replica(procs, etcd, "replica_a_again", port=a.port)
    after = http().get(f"{a.url}/allocate_global_unique_id_range").json()
    assert after["start_id"] >= ranges[-1]["end_id"]


def test_a_replica_answers_503_until_etcd_comes_up(procs: ProcGroup, tmp_path: Path) -> None:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server)")
    etcd = EtcdServer(procs, binary, tmp_path / "etcd-data", free_port(), free_port())
    port = free_port()
    procs.python(
        "replica",
        "-m",
        "config_server",
        "--config_server_port",
        str(port),
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/health"), 20, "the replica to start")
    assert http().get(f"{url}/readiness").status_code == 503
    for reply in (
        http().get(f"{url}/registered_objects"),  # not an empty list: nodes would drop masters
        http().get(f"{url}/v1/nodes"),
        http().get(f"{url}/v1/watch?timeout_s=0"),
        put(url, "nodes", "n1", node_body()),
    ):
        assert reply.status_code == 503
        assert reply.json()["error"]["type"] == "service_unavailable"
    etcd.start()
    wait_until(lambda: http_ok(f"{url}/readiness"), 10, "the replica to load from etcd")
    assert put(url, "nodes", "n1", node_body()).status_code == 200
