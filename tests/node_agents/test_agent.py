"""The agent as a real process, running the simulated engine, registered with a real config
server: states, restarts, API, MPS, and a SIGTERM that leaves nothing behind."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from pdlocal.cluster import ProcGroup
from pdlocal.registry import ConfigServer, start_config_server
from tests.node_agents.agentproc import AgentProc, sim_node_config, start_agent
from tests.node_agents.fake_mps import calls, install
from tests.node_agents.procutil import alive, children_of, wait_for


@pytest.fixture
def config_server(procs: ProcGroup) -> ConfigServer:
    return start_config_server(procs)


def node_record(server: ConfigServer, node_id: str) -> dict | None:
    items = httpx.get(f"{server.url}/v1/nodes", timeout=5).json()["items"]
    return next((n for n in items if n["id"] == node_id), None)


def launch(
    procs: ProcGroup, agents: list[AgentProc], name: str, config: dict, env: dict | None = None
) -> AgentProc:
    agent = start_agent(procs, name, config, env)
    agents.append(agent)
    return agent


def test_agent_registers_restarts_stops_and_leaves_no_children_on_sigterm(
    procs: ProcGroup, agents: list[AgentProc], config_server: ConfigServer, tmp_path: Path
) -> None:
    mps_log, mps_state = tmp_path / "mps.jsonl", tmp_path / "mps.state"
    env = install(tmp_path / "bin", mps_log, mps_state)
    env["PDCTL_AGENT_TOKEN"] = "agent-secret"
    config = sim_node_config(
        tmp_path, "p0", "prefill", "127.0.0.21",
        pd_master="127.0.0.1:9", config_server=config_server.address,
    )  # fmt: skip
    config["mps"] = True
    agent = launch(procs, agents, "p0", config, env)
    status = agent.wait_state("RUNNING")
    pid = status["engine"]["pid"]
    assert status["mps"] == {"enabled": True, "started_by_us": True}
    assert httpx.get(f"{agent.url}/status", timeout=5).status_code == 401

    def registered(state: str) -> bool:
        record = node_record(config_server, "p0")
        return record is not None and record["state"] == state

    wait_for(lambda: registered("RUNNING"), 10, "the config server to show RUNNING")
    record = node_record(config_server, "p0")
    assert record is not None
    assert (record["role"], record["address"]) == ("prefill", agent.address)
    assert record["info"]["pid"] == pid and record["info"]["restarts"] == 0
    assert record["info"]["ports"]["http"] == config["port"]

    assert agent.call("POST", "/restart").status_code == 202
    status = agent.wait_state("RUNNING", restarts=1)
    assert status["engine"]["pid"] != pid and not alive(pid)
    pid = status["engine"]["pid"]
    agent.call("POST", "/stop")
    agent.wait_state("STOPPED")
    wait_for(lambda: registered("STOPPED"), 10, "the config server to show STOPPED")
    assert not alive(pid)
    agent.call("POST", "/restart")
    pid = agent.wait_state("RUNNING")["engine"]["pid"]

    assert agent.proc.popen is not None
    agent_pid = agent.proc.popen.pid
    started = time.monotonic()
    agent.proc.popen.send_signal(signal.SIGTERM)
    assert agent.proc.popen.wait(10) == 0
    assert time.monotonic() - started < 5
    assert not alive(pid) and children_of(agent_pid) == []
    assert [c["stdin"].strip() or c["argv"] for c in calls(mps_log)][-1] == "quit"
    assert ["-d"] in [c["argv"] for c in calls(mps_log)] and not mps_state.exists()
    assert node_record(config_server, "p0") is None


def test_engine_that_exits_at_once_goes_backoff_then_fatal(
    procs: ProcGroup, agents: list[AgentProc], config_server: ConfigServer, tmp_path: Path
) -> None:
    config = sim_node_config(
        tmp_path, "d0", "decode", "127.0.0.22",
        pd_master="127.0.0.1:9", config_server=config_server.address,
    )  # fmt: skip
    config["python"] = "/bin/false"  # the engine "starts" and exits 1 at once
    agent = launch(procs, agents, "d0", config)
    status = agent.wait_state("FATAL", timeout=15)
    path = [h["to"] for h in status["engine"]["history"]]
    assert path == ["STARTING", "BACKOFF"] * 3 + ["FATAL"]
    assert status["engine"]["last_exit"]["status"] == 1
    wait_for(
        lambda: (node_record(config_server, "d0") or {}).get("state") == "FATAL",
        1.0,
        "the config server to show FATAL",
    )


def test_fatal_shows_the_engines_own_cause_in_the_log_and_status(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    """A LightLLM node on a machine without LightLLM: the agent says why, not only "exit 1"."""
    config = sim_node_config(tmp_path, "p9", "prefill", "127.0.0.24", pd_master="127.0.0.1:9")
    config |= {"engine": "lightllm", "model_dir": str(tmp_path), "mps": False, "extra_args": []}
    agent = launch(procs, agents, "p9", config)
    status = agent.wait_state("FATAL", timeout=15)
    last_stderr = status["engine"]["last_stderr"]
    assert len(last_stderr) == 1  # this run's lines, not every earlier run's
    assert "No module named 'lightllm'" in last_stderr[0]
    assert status["health"]["last_error"] is None  # about an engine that is gone
    log = agent.proc.log()
    assert "last lines of its stderr" in log
    fatal = next(line for line in log.splitlines() if "engine FATAL" in line)
    assert "No module named 'lightllm'" in fatal
    before_fatal = log[: log.index(fatal)].splitlines()
    assert "retry in" not in before_fatal[-1] and "retry in" not in before_fatal[-2]


def test_hung_engine_is_restarted(
    procs: ProcGroup, agents: list[AgentProc], config_server: ConfigServer, tmp_path: Path
) -> None:
    config = sim_node_config(
        tmp_path, "p1", "prefill", "127.0.0.23",
        pd_master="127.0.0.1:9", config_server=config_server.address,
    )  # fmt: skip
    config["restart"]["stopwaitsecs"] = 0.5  # the hung engine ignores SIGTERM: SIGKILL sooner
    agent = launch(procs, agents, "p1", config)
    hung_pid = agent.wait_state("RUNNING")["engine"]["pid"]
    reply = httpx.put(f"{agent.engine_url}/sim/faults", json={"hang": True}, timeout=5)
    assert reply.status_code == 200
    status = agent.wait_state("RUNNING", timeout=20, restarts=1)
    assert status["health"]["restarts_requested"] == 1
    reasons = [h["reason"] for h in status["engine"]["history"]]
    assert any("3 health probes failed in a row" in r for r in reasons)
    assert not alive(hung_pid)  # it ignored SIGTERM while hung: SIGKILL after stopwaitsecs


def test_failing_mps_daemon_stops_the_agent_with_a_clear_error(
    procs: ProcGroup, agents: list[AgentProc], tmp_path: Path
) -> None:
    env = install(tmp_path / "bin", tmp_path / "mps.jsonl", tmp_path / "state", "fail_start")
    config = sim_node_config(tmp_path, "p2", "prefill", "127.0.0.24", pd_master="127.0.0.1:9")
    config["mps"] = True
    agent = launch(procs, agents, "p2", config, env)
    assert agent.proc.popen is not None and agent.proc.popen.wait(15) == 1
    assert "nvidia-cuda-mps-control -d failed with exit status 1" in agent.proc.log()
    assert not (tmp_path / "p2-logs").exists()  # no engine was started
