from __future__ import annotations

from collections.abc import Iterator

import pytest

from pdlocal.cluster import ProcGroup
from pdlocal.registry import ConfigServer, start_config_server
from tests.etcd_fixture import etcd  # noqa: F401  (a fixture for this package's tests)


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigServer]:
    """One memory-store config server shared by a module's tests (which clean up after them)."""
    group = ProcGroup(tmp_path_factory.mktemp("config_server"))
    try:
        yield start_config_server(group, "--lightllm-lease-ttl", "2")
    finally:
        group.stop_all()
