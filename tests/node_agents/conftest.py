from __future__ import annotations

from collections.abc import Iterator

import pytest

from pdlocal.cluster import ProcGroup
from tests.node_agents.agentproc import AgentProc


@pytest.fixture
def agents(procs: ProcGroup) -> Iterator[list[AgentProc]]:
    """Agents a test started: stopped with the test's other processes, then any engine left
    behind (only possible if an agent was killed) is killed too."""
    started: list[AgentProc] = []
    yield started
    procs.stop_all()
    for agent in started:
        agent.reap()
