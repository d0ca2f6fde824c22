"""A short run of every benchmark: each must finish, print its table and write its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

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


def relay_overhead_has_both_paths(data: dict[str, Any]) -> None:
    """Through the master on /generate_stream and /v1/completions, every stamped token
    reaches the client on both (an OpenAI chunk's merged stamps each count)."""
    lightllm, openai = data["delivery"], data["delivery_openai"]
    assert {r["path"] for r in lightllm} == {"/generate_stream"}
    assert {r["path"] for r in openai} == {"/v1/completions"}
    for a, b in zip(lightllm, openai, strict=True):
        assert a["streams"] == b["streams"]
        assert a["pd"]["tokens"] == b["pd"]["tokens"] > 0
        assert b["pd"]["p50_ms"] > 0 and b["added_p50_ms_by_round"]
    compare = data["pd_vs_direct"]
    assert compare["pd_openai"]["path"] == "/v1/completions"
    assert compare["pd_openai"]["succeeded"] == compare["pd"]["succeeded"] > 0
    assert compare["pd_openai"]["ttft_s"]["count"] == compare["pd"]["ttft_s"]["count"]


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "relay_overhead": relay_overhead_has_both_paths,
}


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
    CHECKS.get(name, lambda data: None)(data)
