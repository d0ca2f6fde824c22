"""NodeAgent in-process: what it registers, and drain with stop, on fakes."""

from __future__ import annotations

import asyncio

import httpx

from node_agents.agent import NodeAgent, visible_gpus
from node_agents.config import parse_config
from node_agents.process import State
from tests.node_agents.fakes import FakeClock, FakeSpawner

CONFIG = {
    "role": "decode",
    "engine": "sim",
    "host": "127.0.0.2",
    "port": 8121,
    "nccl_port": 12322,
    "pd_master": "127.0.0.1:60011",
    "config_server": "127.0.0.1:60088",
    "restart": {"startsecs": 0},
}


def master(request: httpx.Request) -> httpx.Response:
    """A master with this node idle on it."""
    node = {"node_id": "5", "address": "127.0.0.2:8121", "draining": True, "in_flight_requests": 0}
    return httpx.Response(200, json={"items": [node]})


def running_agent(clock: FakeClock) -> NodeAgent:
    client = httpx.AsyncClient(transport=httpx.MockTransport(master))
    agent = NodeAgent(
        parse_config(CONFIG), spawner=FakeSpawner(), clock=clock, client=client, mps=None,
        gpus=["0000:18:00.0"], env={"CUDA_VISIBLE_DEVICES": "0,1"},
    )  # fmt: skip
    agent.process.start()
    agent.process.note_health(True)
    agent.process.tick()
    assert agent.process.state is State.RUNNING
    return agent


def test_registration_reports_role_state_pid_ports_and_gpus() -> None:
    body = running_agent(FakeClock()).registration_body()
    assert (body["address"], body["role"], body["state"]) == ("127.0.0.2:8121", "decode", "RUNNING")
    info = body["info"]
    assert (info["pid"], info["restarts"], info["engine_state"]) == (100, 0, "RUNNING")
    assert info["gpus"] == ["0000:18:00.0"] and info["cuda_visible_devices"] == "0,1"
    assert info["ports"] == {"http": 8121, "nccl": 12322, "agent": 9121}
    assert info["lightllm_version"] == "v1.1.0"  # the config's default release


def test_drain_then_drain_with_stop_stops_the_drained_engine() -> None:
    agent = running_agent(FakeClock())

    async def go() -> None:
        first = await agent.drain(stop=False)
        assert first["drain"]["masters"] == {
            "127.0.0.1:60011": {"nodes": 1, "draining": True, "in_flight": 0}
        }
        await asyncio.sleep(0.05)
        assert agent.state == "DRAINED" and agent.process.state is State.RUNNING
        await agent.drain(stop=True)
        assert agent.process.state is State.STOPPING
        agent.restart()  # ends the drain
        assert agent.drainer.status == "idle"

    asyncio.run(go())


def test_no_driver_means_no_gpus(tmp_path) -> None:
    assert visible_gpus(tmp_path / "absent") == []
    (tmp_path / "0000:18:00.0").mkdir()
    assert visible_gpus(tmp_path) == ["0000:18:00.0"]
