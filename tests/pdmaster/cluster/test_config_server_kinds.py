"""A master against LightLLM's own config server, and against none at all: it says what it
found once, then keeps quiet and keeps trying (real processes on 127.0.0.1)."""

from __future__ import annotations

import time

import httpx

from pdlocal.cluster import ProcGroup, free_port, http_ok, start_master_proc, wait_until


def warnings(log: str) -> list[str]:
    """Warnings about the config server (its link, registration, id ranges)."""
    return [ln for ln in log.splitlines() if " WARNING pdmaster.cluster" in ln]


def test_lightllm_config_server_is_detected_once_and_used_over_its_websocket(
    procs: ProcGroup,
) -> None:
    port = free_port()
    procs.python("lightllm_cs", "-m", "tests.pdmaster.cluster.lightllm_config_server", "--port",
                 str(port))  # fmt: skip
    fake = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{fake}/fake/stats"), 20, "the fake LightLLM config server")
    master = start_master_proc(
        procs, "master", free_port(), "--config_server_host", "127.0.0.1",
        "--config_server_port", str(port), "--lease_ttl", "1.5",
    )  # fmt: skip
    wait_until(
        lambda: httpx.get(f"{fake}/fake/stats", timeout=2).json()["registrations"] == 1,
        10,
        "the websocket registration",
    )
    time.sleep(4)  # long enough for a dozen lease renewals and watch polls
    lines = warnings(master.log())
    assert len([ln for ln in lines if "it is LightLLM's own" in ln]) == 1, lines
    assert len(lines) == 1, lines
    assert httpx.get(f"{fake}/fake/stats", timeout=2).json()["registrations"] == 1


def test_an_unreachable_config_server_is_one_warning_then_a_summary(procs: ProcGroup) -> None:
    nothing = free_port()
    port = free_port()
    master = procs.python(
        "master", "-m", "pdmaster", "--port", str(port), "--config_server_host", "127.0.0.1",
        "--config_server_port", str(nothing), "--lease_ttl", "1.5",
    )  # fmt: skip
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 20, "the master")
    time.sleep(5)
    lines = warnings(master.log())
    assert len(lines) == 1 and "failing" in lines[0], lines
