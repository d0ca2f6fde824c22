"""Health probing: STARTING needs an answer, RUNNING restarts after N failures in a row."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from node_agents.config import HealthConfig, RestartPolicy
from node_agents.health import HealthProber, health_url
from node_agents.lightllm_cmd import EngineCommand
from node_agents.process import EngineProcess, State
from tests.node_agents.fakes import FakeClock, FakeSpawner


class Engine:
    """What the fake engine answers on /health: a status code, an error, or a hang."""

    def __init__(self) -> None:
        self.answer: int | str = 200
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.answer == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if self.answer == "hang":
            raise httpx.ReadTimeout("timed out", request=request)
        assert isinstance(self.answer, int)
        return httpx.Response(self.answer, json={"status": "ok"})


@pytest.fixture
def rig() -> tuple[HealthProber, EngineProcess, Engine, FakeClock]:
    clock, engine = FakeClock(), Engine()
    policy = RestartPolicy(startsecs=1, stopwaitsecs=5)
    proc = EngineProcess(EngineCommand(["e"]), policy, FakeSpawner(), clock)
    client = httpx.AsyncClient(transport=httpx.MockTransport(engine.handler))
    prober = HealthProber(
        client, "http://127.0.0.2:8019/health", HealthConfig(failures=3), proc, clock
    )
    return prober, proc, engine, clock


def steps(prober: HealthProber, n: int) -> None:
    async def go() -> None:
        for _ in range(n):
            await prober.step()

    asyncio.run(go())


def to_running(prober: HealthProber, proc: EngineProcess, clock: FakeClock) -> None:
    proc.start()
    steps(prober, 1)
    clock.advance(1)
    proc.tick()
    assert proc.state is State.RUNNING


def test_an_answer_lets_a_starting_engine_become_running(rig) -> None:
    prober, proc, engine, clock = rig
    proc.start()
    engine.answer = "refused"
    steps(prober, 5)
    clock.advance(1)
    proc.tick()
    assert proc.state is State.STARTING and proc.starts == 1  # failures while loading: no restart
    engine.answer = 200
    steps(prober, 1)
    proc.tick()
    assert proc.state is State.RUNNING


@pytest.mark.parametrize("failure", ["hang", "refused", 503])
def test_n_failures_in_a_row_restart_a_running_engine(rig, failure) -> None:
    prober, proc, engine, clock = rig
    to_running(prober, proc, clock)
    engine.answer = failure
    steps(prober, 2)
    assert proc.state is State.RUNNING and prober.consecutive_failures == 2
    steps(prober, 1)
    assert proc.state is State.STOPPING and prober.restarts_requested == 1
    assert "3 health probes failed in a row" in proc.history[-1].reason
    proc.tick()
    assert proc.state is State.STARTING and proc.starts == 2


def test_a_success_in_between_resets_the_count(rig) -> None:
    prober, proc, engine, clock = rig
    to_running(prober, proc, clock)
    for answer in ("hang", "hang", 200, "hang", "hang"):
        engine.answer = answer
        steps(prober, 1)
    assert proc.state is State.RUNNING and prober.consecutive_failures == 2


def test_no_probes_while_the_engine_is_not_up(rig) -> None:
    prober, proc, engine, _ = rig
    steps(prober, 3)
    assert engine.calls == 0


def test_health_url_asks_loopback_for_a_wildcard_host() -> None:
    assert health_url("0.0.0.0", 8019, "/health") == "http://127.0.0.1:8019/health"
    assert health_url("fe80::1", 8019, "/health") == "http://[fe80::1]:8019/health"
