"""Multi-master mode: a config server, two masters and 2P/2D simulated nodes that find the
masters through it (real processes; memory store, and replicas on etcd)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import httpx
import pytest

from pdlocal.cluster import ProcGroup, wait_until
from pdlocal.registry import EtcdServer, start_config_server
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from pdwire.lightllm import LightLLMCodec
from tests.integration.echo_model import expected
from tests.integration.load import Outcome, run_load
from tests.integration.multimaster import MasterProc, MultiMasterCluster

LEASE_S = 3.0  # the masters' --lease_ttl


def two_masters(group: ProcGroup) -> MultiMasterCluster:
    c = MultiMasterCluster(group)
    c.start_config_server()
    for _ in range(2):
        c.start_master()
    for i in range(2):
        c.add_node("prefill", i)
        c.add_node("decode", i)
    c.wait_joined(c.masters, 2, 2)
    return c


@pytest.fixture
def mm(procs: ProcGroup) -> MultiMasterCluster:
    """The test's own, for a test that kills a master or the config server."""
    return two_masters(procs)


@pytest.fixture(scope="module")
def shared_mm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiMasterCluster]:
    """Shared by the tests that kill nothing (a drain is undone before its test ends)."""
    group = ProcGroup(tmp_path_factory.mktemp("shared_mm"))
    try:
        yield two_masters(group)
    finally:
        group.stop_all()


def registered_ids(url: str) -> set[int]:
    data = httpx.get(f"{url}/registered_objects", timeout=5).json()["data"]
    return set(LightLLMCodec().decode_registered_objects(base64.b64decode(data)))


def v1(url: str, plural: str) -> list[dict]:
    return httpx.get(f"{url}/v1/{plural}", timeout=5).json()["items"]


def master_ids(mm: MultiMasterCluster) -> list[str]:
    """Each master's id, as the config server lists it (matched by address)."""
    assert mm.config is not None
    by_address = {r["address"]: r["id"] for r in v1(mm.config.url, "masters")}
    return [by_address[f"127.0.0.1:{m.port}"] for m in mm.masters]


def generate(master: MasterProc, prompt: str, tokens: int = 12) -> httpx.Response:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": tokens, "ignore_eos": True}}
    return httpx.post(f"{master.url}/generate", json=body, timeout=30)


def connected_masters(mm: MultiMasterCluster) -> list[set[str]]:
    """Per node: addresses of the masters it has a live connection to."""
    return [
        {m["address"] for m in node.stats()["masters"].values() if m["connected"]}
        for node in mm.nodes
    ]


def test_nodes_join_both_masters_and_either_master_serves(shared_mm: MultiMasterCluster) -> None:
    mm = shared_mm
    assert mm.config is not None
    tok = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
    for i, master in enumerate(mm.masters * 3):
        prompt = f"Question {i}: what does a config server do?"
        reply = generate(master, prompt)
        assert reply.status_code == 200, reply.text
        assert reply.json()["generated_text"][0] == expected(tok, prompt, 12, ignore_eos=True)[0]
    ids = master_ids(mm)
    assert {str(i) for i in registered_ids(mm.config.url)} == set(ids)
    assert all(int(i) >= 1 << 64 or int(i) > 0 for i in ids)  # uuid4().int, not LightLLM's 0

    def listed() -> bool:  # the masters' leases carry their node lists (renewed every 1 s)
        nodes = v1(mm.config.url, "nodes")
        return len(nodes) == 4 and all(n["info"]["connected_masters"] == sorted(ids) for n in nodes)

    wait_until(listed, 10, "the admin listing to show every node on both masters")
    nodes = {n["address"]: n for n in v1(mm.config.url, "nodes")}
    assert {(n["role"], n["registered_via"]) for n in nodes.values()} == {
        ("prefill", "master_report"),
        ("decode", "master_report"),
    }
    assert set(nodes) == {f"{n.host}:{n.port}" for n in mm.nodes}


def prompts(master: MasterProc, n: int) -> list[str]:
    return [f"Request {i} through the master on port {master.port}." for i in range(n)]


async def both_masters(mm: MultiMasterCluster, n: int, concurrency: int) -> list[list[Outcome]]:
    loads = [run_load(m.url, prompts(m, n), 24, concurrency) for m in mm.masters]
    return await asyncio.wait_for(asyncio.gather(*loads), 90)


def assert_exact(mm: MultiMasterCluster, results: list[list[Outcome]]) -> None:
    tok = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
    for master, outcomes in zip(mm.masters, results, strict=True):
        for prompt, outcome in zip(prompts(master, len(outcomes)), outcomes, strict=True):
            assert outcome.ok, outcome
            assert outcome.text == expected(tok, prompt, 24, ignore_eos=True)[0]


def test_group_ids_of_two_masters_never_collide(shared_mm: MultiMasterCluster) -> None:
    """Both masters' requests land on the same nodes at once; a shared group id would mix
    their tokens or end one of them early."""
    assert_exact(shared_mm, asyncio.run(both_masters(shared_mm, 60, 30)))


def test_a_dead_master_leaves_the_registry_and_the_nodes(mm: MultiMasterCluster) -> None:
    assert mm.config is not None
    dead, alive = mm.masters[1], mm.masters[0]
    dead_id, alive_id = master_ids(mm)[1], master_ids(mm)[0]
    dead.proc.kill()
    killed_at = time.monotonic()

    def gone() -> bool:
        in_v1 = {r["id"] for r in v1(mm.config.url, "masters")}
        return dead_id not in in_v1 and int(dead_id) not in registered_ids(mm.config.url)

    wait_until(gone, LEASE_S + 5, "the dead master to leave the registry")
    assert time.monotonic() - killed_at <= LEASE_S + 2
    assert {r["id"] for r in v1(mm.config.url, "masters")} == {alive_id}
    wait_until(
        lambda: all(len(node.stats()["masters"]) == 1 for node in mm.nodes),
        10,
        "every node to drop the dead master",
    )
    assert connected_masters(mm) == [{f"127.0.0.1:{alive.port}"}] * 4
    assert generate(alive, "Still there?").status_code == 200


def test_config_server_restart_keeps_traffic_flowing(mm: MultiMasterCluster) -> None:
    """Memory store: the restarted config server is empty; masters and nodes re-register,
    and requests through both masters keep succeeding all along."""
    assert mm.config is not None
    ids = set(master_ids(mm))
    port = mm.config.port

    async def restart_during_traffic() -> list[list[Outcome]]:
        load = asyncio.create_task(both_masters(mm, 80, 4))
        await asyncio.sleep(0.5)
        assert mm.config is not None
        mm.config.proc.kill()
        await asyncio.sleep(2.0)  # masters and nodes carry on without it
        await asyncio.to_thread(mm.start_config_server, port=port)
        return await asyncio.wait_for(load, 60)

    assert_exact(mm, asyncio.run(restart_during_traffic()))

    def re_registered() -> bool:
        in_v1 = {r["id"] for r in v1(mm.config.url, "masters")}
        return in_v1 == ids and {str(i) for i in registered_ids(mm.config.url)} == ids

    wait_until(re_registered, 10, "both masters to register again")
    addresses = {f"127.0.0.1:{m.port}" for m in mm.masters}
    assert connected_masters(mm) == [addresses] * 4  # no node dropped a master meanwhile
    for master in mm.masters:
        assert generate(master, "After the restart").status_code == 200


def test_a_drain_in_the_config_server_reaches_every_master(shared_mm: MultiMasterCluster) -> None:
    """What a node agent's drain does: its registration turns DRAINING in the config server;
    both masters stop selecting the node; back to RUNNING, both select it again."""
    mm = shared_mm
    assert mm.config is not None
    node = mm.nodes[0]  # prefill0
    address = f"{node.host}:{node.port}"

    def put(state: str) -> None:
        body = {"address": address, "role": "prefill", "state": state, "ttl_s": 30}
        reply = httpx.put(f"{mm.config.url}/v1/nodes/agent-prefill0", json=body, timeout=5)
        assert reply.status_code == 200, reply.text

    def drained_by(master: MasterProc) -> str | None:
        items = httpx.get(f"{master.url}/v1/nodes", timeout=5).json()["items"]
        return next(n["drained_by"] for n in items if n["address"] == address)

    put("DRAINING")
    wait_until(
        lambda: all(drained_by(m) == "config_server" for m in mm.masters),
        5,
        "both masters to drain the node",
    )
    before = node.stats()["requests"]
    for i in range(8):
        assert generate(mm.masters[i % 2], f"drained {i}", 4).status_code == 200
    assert node.stats()["requests"] == before
    put("RUNNING")
    wait_until(lambda: all(drained_by(m) is None for m in mm.masters), 5, "the undrain")
    for i in range(8):
        assert generate(mm.masters[i % 2], f"back {i}", 4).status_code == 200
    assert node.stats()["requests"] > before


def test_a_master_registers_with_the_register_token(procs: ProcGroup) -> None:
    """With PDCTL_REGISTER_TOKEN on the config server, a master holding it gets its /v1
    lease (and its watch); one with a wrong token
    is refused the lease and is known only through LightLLM's token-less websocket."""
    c = MultiMasterCluster(procs)
    c.config = start_config_server(
        procs, env={"PDCTL_REGISTER_TOKEN": "reg-s3cret", "PDCTL_ADMIN_TOKEN": "adm-s3cret"}
    )
    good = c.start_master("--register-token", "reg-s3cret")
    bad = c.start_master("--register-token", "wrong")
    admin = {"Authorization": "Bearer adm-s3cret"}

    def via() -> dict[str, str]:
        items = httpx.get(f"{c.config.url}/v1/masters", headers=admin, timeout=5).json()["items"]
        return {r["address"]: r["registered_via"] for r in items}

    expected_via = {
        f"127.0.0.1:{good.port}": "v1",
        f"127.0.0.1:{bad.port}": "lightllm_websocket",
    }
    wait_until(lambda: via() == expected_via, 10, "both masters to be listed")
    assert httpx.get(f"{c.config.url}/v1/masters", timeout=5).status_code == 401
    refusal = next(
        ln for ln in bad.proc.log().splitlines() if "config server" in ln and "failing" in ln
    )
    assert "403" in refusal  # the lease or the watch, refused: one line, not one per retry
    assert "refused" not in good.proc.log() and "failing" not in good.proc.log()


def test_replicas_on_etcd_serve_one_cluster(procs: ProcGroup, etcd: EtcdServer) -> None:
    """Two config server replicas on one etcd: each master registers with a different
    replica, each node polls one of them, and every node still finds both masters."""
    c = MultiMasterCluster(procs)
    replicas = [
        start_config_server(
            procs, "--store", "etcd", "--etcd-endpoints", etcd.endpoint, name=f"replica{i}"
        )
        for i in range(2)
    ]
    c.config = replicas[0]
    for replica in replicas:
        c.start_master(config=replica)
    for i in range(2):
        c.add_node("prefill", i, config=replicas[i])
        c.add_node("decode", i, config=replicas[1 - i])
    c.wait_joined(c.masters, 2, 2)
    assert registered_ids(replicas[0].url) == registered_ids(replicas[1].url)
    assert len(registered_ids(replicas[0].url)) == 2
    assert_exact(c, asyncio.run(both_masters(c, 12, 6)))
