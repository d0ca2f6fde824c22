"""A short run of every benchmark: each must finish, print its table and write its JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.common import RESULTS

BENCHMARKS = [
    "master_cost",
    "relay_overhead",
    "scale",
    "routing_quality",
    "node_agent",
    "wire_decode",
    "sse_encode",
    "vs_gateways",
]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke_run(name: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,  # a loaded CI machine; vs_gateways starts up to 8 processes
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote " in r.stdout
    data = json.loads((RESULTS / f"{name}_smoke.json").read_text())
    assert data["meta"]["python"]
    text = json.dumps(data)
    assert '"errors": 0' in text or '"errors": {}' in text
