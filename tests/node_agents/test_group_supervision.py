"""A 2-rank simulated instance under two agents: the ranks live and die together.

Each rank is its own engine process under its own agent, coupled as LightLLM's ranks are
(the simulated engine's rank group: a rank whose peer is gone hangs, as an NCCL collective
would). The agents coordinate only through the config server's group record.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from pdlocal.cluster import Cluster, ProcGroup, free_port, until_serving
from pdlocal.registry import ConfigServer, start_config_server
from tests.integration.load import Outcome
from tests.node_agents.agentproc import AgentProc, sim_node_config, start_agent
from tests.node_agents.procutil import alive, wait_for
from tests.node_agents.test_agent_cluster import (
    MASTER_FLAGS,
    SLOW_DECODE,
    _gather_streams,
    master_nodes,
    streams,
)

HOSTS = ("127.0.0.61", "127.0.0.62")


def rank_configs(
    tmp_path: Path, role: str, server: ConfigServer, master: str | None, **rank1: Any
) -> list[dict[str, Any]]:
    nccl_port = free_port(HOSTS[0])
    configs = []
    for rank, host in enumerate(HOSTS):
        config = sim_node_config(
            tmp_path, f"{role}-r{rank}", role, host, pd_master=master,
            config_server=server.address, timing=SLOW_DECODE,
        )  # fmt: skip
        config.update(nnodes=2, node_rank=rank, nccl_host=HOSTS[0], nccl_port=nccl_port, tp=2, dp=2)
        config["group"] = {"id": f"{role}-instance", "poll_s": 0.2}
        config["restart"]["stopwaitsecs"] = 1.0
        configs.append({**config, **(rank1 if rank == 1 else {})})
    return configs


def group(server: ConfigServer, group_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{server.url}/v1/groups/{group_id}", timeout=5, verify=False)
    return dict(reply.json())


def test_killing_one_rank_restarts_every_rank_and_the_instance_serves_again(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    server = start_config_server(procs)
    cluster = Cluster(procs)
    cluster.start_master(*MASTER_FLAGS)
    cluster.add_node("prefill", 0)
    master = f"127.0.0.1:{cluster.master_port}"
    for i, config in enumerate(rank_configs(tmp_path, "decode", server, master)):
        agents.append(start_agent(procs, f"decode-r{i}", config))
    pids = [a.wait_state("RUNNING")["engine"]["pid"] for a in agents]
    cluster.wait_ready(1, 2)  # every rank registers with the master as a node of its own
    wait_for(lambda: group(server, "decode-instance")["state"] == "RUNNING", 10, "RUNNING")
    (instance,) = httpx.get(f"{cluster.url}/v1/instances", timeout=5).json()["items"]
    assert instance["nnodes"] == 2 and instance["complete"] and instance["role"] == "decode"
    assert {r["address"] for r in instance["ranks"].values()} == {a.address for a in agents}

    async def scenario() -> tuple[list[Outcome], float, float]:
        tasks = await streams(cluster.url, 6, 400)
        wait = time.monotonic() + 10
        while not all(master_nodes(cluster)[a.address]["in_flight_requests"] for a in agents):
            assert time.monotonic() < wait, "streams never reached both ranks"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        errors_within = time.monotonic() - killed
        back = await until_serving(cluster.url, killed, 20)
        return list(done), errors_within, back

    outcomes, errors_within, back = asyncio.run(scenario())
    assert all(o.error is not None and not o.hung for o in outcomes), outcomes
    for agent, pid in zip(agents, pids, strict=True):
        status = agent.wait_state("RUNNING", restarts=1)
        assert status["engine"]["pid"] != pid and not alive(pid)
        assert status["group"]["generation"] == 1
    record = group(server, "decode-instance")
    assert record["generation"] == 1 and record["last_restart"]["rank"] == 1
    wait_for(lambda: group(server, "decode-instance")["state"] == "RUNNING", 10, "RUNNING")
    again = asyncio.run(asyncio.wait_for(_gather_streams(cluster.url), 20))
    assert all(o.ok for o in again), again
    assert agents[0].call("POST", "/drain", json={}).status_code == 202
    agents[1].wait_state("DRAINED", timeout=10)  # a drain on one rank drains the instance
    assert all(n["draining"] for n in master_nodes(cluster).values() if n["role"] == "decode")
    assert agents[1].call("POST", "/undrain").status_code == 200
    agents[0].wait_state("RUNNING", timeout=10)  # and an undrain on one undrains the instance
    print(f"\nrank SIGKILL -> group serving again: {back:.2f} s (errors in {errors_within:.2f} s)")


def test_a_rank_that_never_comes_up_makes_the_group_fatal(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    server = start_config_server(procs)
    broken = {"python": "/bin/false"}  # rank 1's engine exits at once, every time
    configs = rank_configs(tmp_path, "prefill", server, "127.0.0.1:9", **broken)
    for i, config in enumerate(configs):
        agents.append(start_agent(procs, f"prefill-r{i}", config))
    agents[1].wait_state("FATAL")
    status = agents[0].wait_state("FATAL", timeout=10)
    assert status["engine"]["state"] == "STOPPED" and not status["engine"]["pid"]
    assert status["group"]["fatal"]["rank"] == 1  # why it is FATAL, in its own status
    # the group's FATAL stops its engine, or finds it stopping already for a group restart
    # (a slow engine's stop outlasts the other rank's retries: it then stays stopped)
    stopped = [h for h in status["engine"]["history"] if h["to"] == "STOPPING"]
    assert stopped[-1]["reason"].startswith(("group FATAL: rank 1", "group generation"))
    record = group(server, "prefill-instance")
    assert record["state"] == "FATAL" and record["fatal"]["rank"] == 1
    # one bump per retried failure; the last one is only FATAL (the others stop, not restart)
    assert record["generation"] == configs[1]["restart"]["startretries"]
    nodes_url = f"{server.url}/v1/nodes"
    nodes = httpx.get(nodes_url, timeout=5).json()["items"]
    states = {n["id"]: n["state"] for n in nodes}
    wait_for(
        lambda: (
            {n["id"]: n["state"] for n in httpx.get(nodes_url, verify=False).json()["items"]}
            == {"prefill-r0": "FATAL", "prefill-r1": "FATAL"}
        ),
        5,
        f"both ranks FATAL in the listing ({states})",
    )


def test_a_hung_rank_failing_health_restarts_the_whole_group(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    server = start_config_server(procs)
    for i, config in enumerate(rank_configs(tmp_path, "decode", server, "127.0.0.1:9")):
        agents.append(start_agent(procs, f"decode-r{i}", config))
    pids = [a.wait_state("RUNNING")["engine"]["pid"] for a in agents]
    hang = httpx.put(f"{agents[0].engine_url}/sim/faults", json={"hang": True}, timeout=5)
    assert hang.status_code == 200
    for agent, pid in zip(agents, pids, strict=True):
        status = agent.wait_state("RUNNING", timeout=20, restarts=1)
        assert status["engine"]["pid"] != pid and status["group"]["generation"] == 1
    reason = group(server, "decode-instance")["last_restart"]
    assert reason["rank"] == 0 and "health probes failed" in reason["reason"]
