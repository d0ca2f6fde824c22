"""``/v1/groups``: one generation per multi-node instance, agreed by compare-and-set."""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any

import httpx
import pytest

from pdlocal.cluster import ProcGroup
from pdlocal.registry import ConfigServer, EtcdServer, start_config_server
from tests.config_server.helpers import http


def gid() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def put(url: str, group: str, **body: Any) -> httpx.Response:
    return http().put(f"{url}/v1/groups/{group}", json=body)


def post(url: str, group: str, what: str, **body: Any) -> httpx.Response:
    return http().post(f"{url}/v1/groups/{group}/{what}", json=body)


def test_a_failed_rank_moves_the_group_to_the_next_generation_once(
    memory_server: ConfigServer,
) -> None:
    url, group = memory_server.url, gid()
    assert put(url, group, nnodes=2, rank=0).json()["generation"] == 0
    assert put(url, group, nnodes=2, rank=1).json()["generation"] == 0
    first = post(url, group, "restart", rank=1, generation=0, reason="exit status 1")
    again = post(url, group, "restart", rank=0, generation=0, reason="health failed")
    assert first.json()["generation"] == again.json()["generation"] == 1
    assert again.json()["last_restart"]["rank"] == 1  # the second ask only read the record
    view = http().get(f"{url}/v1/groups/{group}").json()
    assert view["generation"] == 1 and view["state"] == "INCOMPLETE"  # no agent records yet


def test_fatal_marks_the_generation_and_a_restart_clears_it(memory_server: ConfigServer) -> None:
    url, group = memory_server.url, gid()
    put(url, group, nnodes=2, rank=0, generation=3)
    stale = post(url, group, "fatal", rank=1, generation=2, reason="old news")
    assert stale.json()["fatal"] is None
    fatal = post(url, group, "fatal", rank=1, generation=3, reason="4 quick failures").json()
    assert fatal["fatal"]["rank"] == 1
    listed = http().get(f"{url}/v1/groups").json()["items"]
    assert [g["state"] for g in listed if g["id"] == group] == ["FATAL"]
    healed = post(url, group, "restart", rank=0, generation=3, reason="operator").json()
    assert healed["generation"] == 4 and healed["fatal"] is None


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"nnodes": 0, "rank": 0}, 400, "nnodes"),
        ({"nnodes": 2, "rank": 2}, 409, "rank"),
        ({"nnodes": 2}, 400, "rank"),
        ({"nnodes": 2, "rank": 0, "colour": "red"}, 400, "colour"),
        ({"nnodes": 3, "rank": 0}, 409, "nnodes"),  # the group was made with 2
    ],
)
def test_bad_joins_are_refused_naming_the_field(
    memory_server: ConfigServer, body: dict[str, Any], status: int, names: str
) -> None:
    group = "g-bad-joins"
    put(memory_server.url, group, nnodes=2, rank=0)
    reply = put(memory_server.url, group, **body)
    assert reply.status_code == status
    assert reply.json()["error"]["message"].startswith(names)


def test_unknown_group_is_a_404_and_bad_json_a_400(memory_server: ConfigServer) -> None:
    reply = post(memory_server.url, gid(), "restart", rank=0, generation=0, reason="x")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_group"
    bad = http().put(f"{memory_server.url}/v1/groups/x", content=b"[1")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


def test_replicas_on_etcd_agree_on_one_bump(etcd: EtcdServer, procs: ProcGroup) -> None:
    a = start_config_server(procs, "--store", "etcd", "--etcd-endpoints", etcd.endpoint, name="a")
    b = start_config_server(procs, "--store", "etcd", "--etcd-endpoints", etcd.endpoint, name="b")
    group = gid()
    put(a.url, group, nnodes=4, rank=0)

    def fail(args: tuple[str, int]) -> int:
        url, rank = args
        with httpx.Client(timeout=10) as client:
            body = {"rank": rank, "generation": 0, "reason": f"rank {rank} died"}
            reply = client.post(f"{url}/v1/groups/{group}/restart", json=body)
            reply.raise_for_status()
            return int(reply.json()["generation"])

    asks = [(a.url, 0), (b.url, 1), (a.url, 2), (b.url, 3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert set(pool.map(fail, asks)) == {1}
    assert http().get(f"{b.url}/v1/groups/{group}").json()["generation"] == 1


def test_drain_is_kept_for_its_generation_and_undrain_clears_it(
    memory_server: ConfigServer,
) -> None:
    url, group = memory_server.url, gid()
    put(url, group, nnodes=2, rank=0, generation=5)
    drained = post(url, group, "drain", stop=True).json()["drain"]
    assert drained["stop"] is True and drained["generation"] == 5
    assert post(url, group, "undrain").json()["drain"] is None
    assert post(url, gid(), "undrain").status_code == 404
