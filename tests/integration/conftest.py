from __future__ import annotations

from collections.abc import Iterator

import pytest

from pdlocal.cluster import Cluster, ProcGroup
from tests.etcd_fixture import etcd  # noqa: F401  (a fixture for this package's tests)

MASTER_FLAGS = ("--kv_move_timeout", "5", "--token_idle_timeout", "10")


def two_by_two(group: ProcGroup) -> Cluster:
    """One master with 2 prefill and 2 decode simulated nodes, all joined."""
    c = Cluster(group)
    c.start_master(*MASTER_FLAGS)
    for i in range(2):
        c.add_node("prefill", i)
        c.add_node("decode", i)
    c.wait_ready(2, 2)
    return c


def one_by_one(group: ProcGroup, *master_flags: str) -> Cluster:
    """One master (started with ``master_flags``) with a prefill and a decode node, joined."""
    c = Cluster(group)
    c.start_master(*master_flags)
    c.add_node("prefill", 0)
    c.add_node("decode", 0)
    c.wait_ready(1, 1)
    return c


@pytest.fixture
def cluster(procs: ProcGroup) -> Cluster:
    """A 2P/2D cluster of the test's own, for a test that kills or breaks part of it."""
    return two_by_two(procs)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 2P/2D cluster shared by a module's tests that leave it as they found it (nothing
    killed, faulted or in flight); they compare node and metric counters before and after."""
    group = ProcGroup(tmp_path_factory.mktemp("shared_cluster"))
    try:
        yield two_by_two(group)
    finally:
        group.stop_all()
