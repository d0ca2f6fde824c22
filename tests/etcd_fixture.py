"""An etcd server for tests: free loopback ports, a temporary data dir, stopped afterwards.

Skips when the etcd binary is absent (Debian: ``apt-get install -y etcd-server``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pdlocal.cluster import ProcGroup
from pdlocal.registry import EtcdServer, etcd_binary


@pytest.fixture
def etcd(procs: ProcGroup, tmp_path: Path) -> EtcdServer:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server)")
    return EtcdServer(procs, binary, tmp_path / "etcd-data").start()
