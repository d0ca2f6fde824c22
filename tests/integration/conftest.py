from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster
from tests.procs import ProcGroup


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcGroup]:
    group = ProcGroup(tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.dump_logs())


@pytest.fixture
def cluster(procs: ProcGroup) -> Cluster:
    """One master with 2 prefill and 2 decode simulated nodes, all joined."""
    c = Cluster(procs)
    c.start_master("--kv_move_timeout", "5", "--token_idle_timeout", "10")
    for i in range(2):
        c.add_node("prefill", i)
        c.add_node("decode", i)
    c.wait_ready(2, 2)
    return c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
