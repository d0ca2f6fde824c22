"""Agents under a real master: an engine SIGKILLed during traffic comes back and serves,
and a drained node finishes its streams while new requests go elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from pdlocal.cluster import FAST_TIMING, Cluster, ProcGroup, until_serving
from pdlocal.registry import start_config_server
from tests.integration.load import Outcome, stream_one
from tests.integration.multimaster import MultiMasterCluster
from tests.node_agents.agentproc import AgentProc, sim_node_config, start_agent
from tests.node_agents.procutil import alive, wait_for

SLOW_DECODE = [*FAST_TIMING[:-4], "--decode_base_ms", "10", "--decode_per_seq_us", "20"]
MASTER_FLAGS = ["--first_token_timeout", "3", "--kv_move_timeout", "2", "--token_idle_timeout", "3"]
KILL_DEADLINE_S = 5.0


def master_nodes(cluster: Cluster) -> dict[str, dict]:
    items = httpx.get(f"{cluster.url}/v1/nodes", timeout=5, verify=False).json()["items"]
    return {n["address"]: n for n in items}


def launch(procs: ProcGroup, agents: list[AgentProc], name: str, config: dict) -> AgentProc:
    agent = start_agent(procs, name, config)
    agents.append(agent)
    return agent


async def streams(url: str, n: int, tokens: int, timeout: float = 30) -> list[asyncio.Task]:
    client = httpx.AsyncClient(timeout=None)
    prompts = [f"Tell me a long story about node failures, number {i}." for i in range(n)]
    return [
        asyncio.create_task(stream_one(client, url, p, tokens, timeout), name=p) for p in prompts
    ]


def test_engine_sigkilled_during_traffic_is_restarted_and_serves_again(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    server = start_config_server(procs)
    cluster = Cluster(procs)
    cluster.start_master(*MASTER_FLAGS)
    master = f"127.0.0.1:{cluster.master_port}"
    for name, role, host, timing in (
        ("prefill", "prefill", "127.0.0.31", FAST_TIMING),
        ("decode", "decode", "127.0.0.32", SLOW_DECODE),
    ):
        config = sim_node_config(
            tmp_path, name, role, host, pd_master=master, config_server=server.address,
            timing=timing,
        )  # fmt: skip
        launch(procs, agents, name, config)
    decode = agents[1]
    pid = decode.wait_state("RUNNING")["engine"]["pid"]
    cluster.wait_ready(1, 1)

    async def scenario() -> tuple[list[Outcome], float, float]:
        tasks = await streams(cluster.url, 6, 400)
        wait = time.monotonic() + 10
        while master_nodes(cluster)[decode.address]["in_flight_requests"] < 6:
            assert time.monotonic() < wait, "streams never reached the decode node"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # tokens are flowing
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        done = await asyncio.wait_for(asyncio.gather(*tasks), KILL_DEADLINE_S)
        errors_within = time.monotonic() - killed
        back = await until_serving(cluster.url, killed, 20)
        return done, errors_within, back

    outcomes, errors_within, back = asyncio.run(scenario())
    assert all(o.error is not None and not o.hung and o.text for o in outcomes), outcomes
    assert errors_within < KILL_DEADLINE_S
    status = decode.wait_state("RUNNING", restarts=1)
    assert status["engine"]["pid"] != pid and not alive(pid)
    assert status["engine"]["last_exit"]["status"] == -signal.SIGKILL
    new = asyncio.run(asyncio.wait_for(_gather_streams(cluster.url), 20))
    assert all(o.ok for o in new), new
    print(f"\nengine SIGKILL -> serving again: {back:.2f} s (errors in {errors_within:.2f} s)")


async def _gather_streams(url: str) -> list[Outcome]:
    return list(await asyncio.gather(*await streams(url, 4, 8)))


def crawl(agent: AgentProc, step_ms: float) -> None:
    """Slows the agent's engine down: ``step_ms`` more per decode step."""
    reply = httpx.put(
        f"{agent.engine_url}/sim/faults", json={"extra_latency_ms": step_ms}, timeout=5
    )
    assert reply.status_code == 200, reply.text


def test_drain_lets_running_streams_finish_and_new_requests_go_elsewhere(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    cluster = Cluster(procs)
    cluster.start_master(*MASTER_FLAGS)
    cluster.add_node("prefill", 0)
    other = cluster.add_node("decode", 1, timing=SLOW_DECODE)
    config = sim_node_config(
        tmp_path, "d0", "decode", "127.0.0.41",
        pd_master=f"127.0.0.1:{cluster.master_port}", timing=SLOW_DECODE,
    )  # fmt: skip
    agent = launch(procs, agents, "d0", config)
    pid = agent.wait_state("RUNNING")["engine"]["pid"]
    cluster.wait_ready(1, 2)
    # the node's streams crawl (200 ms a step) until the checks are done: however loaded the
    # machine, they are still running when the drain lands
    crawl(agent, 200)

    async def scenario() -> tuple[list[Outcome], list[Outcome], int]:
        running = await streams(cluster.url, 6, 150)
        wait = time.monotonic() + 10
        while master_nodes(cluster)[agent.address]["in_flight_requests"] == 0:
            assert time.monotonic() < wait, "no stream reached the drained node"
            await asyncio.sleep(0.02)
        reply = await asyncio.to_thread(agent.call, "POST", "/drain", json={"stop": True})
        assert reply.status_code == 202, reply.text
        assert master_nodes(cluster)[agent.address]["draining"]
        on_node = master_nodes(cluster)[agent.address]["in_flight_requests"]
        requests_before = httpx.get(f"{agent.engine_url}/sim/stats", timeout=5).json()["requests"]
        new = await _gather_streams(cluster.url)
        requests_after = httpx.get(f"{agent.engine_url}/sim/stats", timeout=5).json()["requests"]
        assert requests_after == requests_before, "a new request reached the drained node"
        assert on_node > 0
        await asyncio.to_thread(crawl, agent, 0)
        return list(await asyncio.gather(*running)), new, on_node

    finished, new, on_node = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert all(o.ok for o in finished), finished
    assert all(o.ok for o in new), new
    assert other.stats()["requests"] >= len(new)
    status = agent.wait_state("STOPPED", timeout=10)
    assert status["drain"]["status"] == "drained" and status["drain"]["in_flight"] == 0
    assert not alive(pid)
    wait_for(lambda: agent.address not in master_nodes(cluster), 5, "the master to drop it")
    print(f"\ndrain: {on_node} stream(s) finished on the drained node; {len(new)} went elsewhere")


def test_drain_goes_through_the_config_server_to_every_master(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    """Two masters, nodes finding them through the config server: an agent's drain turns its
    registration DRAINING, both masters stop selecting the node (the agent never calls
    them), and its running streams on both masters finish."""
    mm = MultiMasterCluster(procs)
    mm.start_config_server()
    masters = [mm.start_master(*MASTER_FLAGS) for _ in range(2)]
    assert mm.config is not None
    mm.add_node("prefill", 0)
    other = mm.add_node("decode", 1)
    config = sim_node_config(
        tmp_path, "d0", "decode", "127.0.0.42", config_server=mm.config.address,
        timing=[*SLOW_DECODE, "--config_server_poll_s", "0.5"],
    )  # fmt: skip
    agent = launch(procs, agents, "d0", config)
    agent.wait_state("RUNNING")
    mm.wait_joined(masters, 1, 2)

    def on_masters() -> list[dict]:
        return [
            next(n for n in httpx.get(f"{m.url}/v1/nodes", timeout=5, verify=False).json()["items"]
                 if n["address"] == agent.address)
            for m in masters
        ]  # fmt: skip

    async def scenario() -> tuple[list[Outcome], list[Outcome]]:
        running = [t for m in masters for t in await streams(m.url, 4, 150)]
        wait = time.monotonic() + 10
        while not all(n["in_flight_requests"] for n in on_masters()):
            assert time.monotonic() < wait, "no stream reached the node on both masters"
            await asyncio.sleep(0.02)
        reply = await asyncio.to_thread(agent.call, "POST", "/drain", json={})
        assert reply.status_code == 202, reply.text
        assert [n["drained_by"] for n in on_masters()] == ["config_server"] * 2
        before = httpx.get(f"{agent.engine_url}/sim/stats", timeout=5).json()["requests"]
        new = [o for m in masters for o in await _gather_streams(m.url)]
        after = httpx.get(f"{agent.engine_url}/sim/stats", timeout=5).json()["requests"]
        assert after == before, "a new request reached the drained node"
        return list(await asyncio.gather(*running)), new

    finished, new = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert all(o.ok for o in finished) and all(o.ok for o in new), (finished, new)
    assert other.stats()["requests"] >= len(new)
    status = agent.wait_state("DRAINED", timeout=10)
    assert status["drain"]["in_flight"] == 0
    assert all(not r.get("error") for r in status["drain"]["masters"].values())
    record = httpx.get(f"{mm.config.url}/v1/nodes/{config['registration']['node_id']}").json()
    assert record["state"] == "DRAINED"


def test_drain_and_undrain_both_ways_with_one_stable_name(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    """One master, agents that name it directly (LightLLM's single-master layout): the
    master names the node as its agent does, <role>-<host>-<port>, across engine restarts
    (the LightLLM id, random per start, is an attribute); the agent's drain and undrain both
    reach the master, and the master's admin calls take the name."""
    cluster = Cluster(procs)
    cluster.start_master(*MASTER_FLAGS)
    master = f"127.0.0.1:{cluster.master_port}"
    made = []
    for name, role, host in (("p", "prefill", "127.0.0.51"), ("d", "decode", "127.0.0.52")):
        config = sim_node_config(tmp_path, name, role, host, pd_master=master)
        del config["registration"]["node_id"]  # the default name
        made.append(launch(procs, agents, name, config))
    prefill = made[0]
    prefill.wait_state("RUNNING")
    cluster.wait_ready(1, 1)
    name = f"prefill-127.0.0.51-{prefill.config['port']}"
    assert prefill.status()["node_id"] == name
    node = master_nodes(cluster)[prefill.address]
    assert node["node_id"] == name and node["lightllm_node_id"].isdigit()
    metrics = httpx.get(f"{cluster.url}/metrics", timeout=5).text
    assert f'pd_node_inflight_requests{{address="{prefill.address}",node_id="{name}"' in metrics

    assert prefill.call("POST", "/drain", json={}).status_code == 202
    assert master_nodes(cluster)[prefill.address]["drained_by"] == "master"
    reply = prefill.call("POST", "/undrain")
    assert reply.status_code == 200, reply.text
    assert master_nodes(cluster)[prefill.address]["draining"] is False
    assert prefill.status()["state"] == "RUNNING"
    assert httpx.post(f"{cluster.url}/generate", json={"inputs": "hi"}, timeout=10).is_success

    first_id = node["lightllm_node_id"]
    assert prefill.call("POST", "/restart").status_code == 202
    wait_for(
        lambda: (
            master_nodes(cluster).get(prefill.address, {}).get("lightllm_node_id")
            not in (None, first_id)
        ),
        20,
        "the restarted engine to rejoin",
    )
    assert master_nodes(cluster)[prefill.address]["node_id"] == name
    for verb, draining in (("drain", True), ("undrain", False)):
        reply = httpx.post(f"{cluster.url}/v1/nodes/{name}/{verb}", timeout=5)
        assert reply.status_code == 200 and reply.json()["draining"] is draining, reply.text
    reply = httpx.post(f"{cluster.url}/v1/nodes/prefill-10.9.9.9-1/drain", timeout=5)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_node"


def test_undrain_through_the_config_server_and_a_clear_409_on_the_master(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    mm = MultiMasterCluster(procs)
    mm.start_config_server()
    masters = [mm.start_master(*MASTER_FLAGS) for _ in range(2)]
    assert mm.config is not None
    mm.add_node("decode", 1)
    config = sim_node_config(
        tmp_path, "p0", "prefill", "127.0.0.53", config_server=mm.config.address,
        timing=[*FAST_TIMING, "--config_server_poll_s", "0.5"],
    )  # fmt: skip
    agent = launch(procs, agents, "p0", config)
    agent.wait_state("RUNNING")
    mm.wait_joined(masters, 1, 1)

    def on_masters() -> list[dict]:
        return [
            next(n for n in httpx.get(f"{m.url}/v1/nodes", timeout=5, verify=False).json()["items"]
                 if n["address"] == agent.address)
            for m in masters
        ]  # fmt: skip

    assert [n["node_id"] for n in on_masters()] == ["p0", "p0"]  # the agent's own id
    assert agent.call("POST", "/drain", json={}).status_code == 202
    assert [n["drained_by"] for n in on_masters()] == ["config_server"] * 2
    reply = httpx.post(f"{masters[0].url}/v1/nodes/p0/undrain", timeout=5)
    assert reply.status_code == 409
    assert "POST /undrain on the agent" in reply.json()["error"]["message"]
    assert agent.call("POST", "/undrain").status_code == 200
    wait_for(lambda: all(not n["draining"] for n in on_masters()), 5, "both masters to undrain")
    record = httpx.get(f"{mm.config.url}/v1/nodes/p0", timeout=5).json()
    assert record["state"] == "RUNNING"
    for m in masters:
        assert httpx.post(f"{m.url}/generate", json={"inputs": "back"}, timeout=10).is_success
