from __future__ import annotations

import pytest

from pdlocal.cluster import Cluster, ProcGroup
from tests.etcd_fixture import etcd  # noqa: F401  (a fixture for this package's tests)


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
