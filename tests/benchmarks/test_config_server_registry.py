"""A short run of the config server registry benchmark on both stores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.common import RESULTS
from pdlocal.registry import etcd_binary


def test_registry_benchmark_smoke_run() -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server)")
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.config_server_registry", "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote " in r.stdout
    data = json.loads((RESULTS / "config_server_registry_smoke.json").read_text())
    assert [row["store"] for row in data["results"]] == ["memory", "etcd"]
    assert all(row["errors"] == 0 and row["register_per_s"] > 0 for row in data["results"])
