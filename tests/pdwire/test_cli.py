"""Every pdctl command: a usage error is one line and exit status 2, ``--help`` shows the
defaults, and LightLLM's api_server flags are taken where LightLLM's roles take them."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from pdlocal.cluster import ProcGroup, free_port, http_ok, wait_until
from tests.conftest import REPO_ROOT

# each command with the flags it requires
COMMANDS = {
    "pdmaster": [],
    "config_server": [],
    "node_agents": [],
    "node_agents.simengine": ["--run_mode", "prefill"],
    "benchmark_client": ["--url", "http://127.0.0.1:1/generate_stream"],
}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_flag_is_one_line_and_exit_2(command: str) -> None:
    done = run(command, *COMMANDS[command], "--no_such_flag", "1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "unrecognized arguments: --no_such_flag 1; see --help" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pdmaster", "--port", "99999"], "--port: 99999 is not a port (1-65535)"),
        (["config_server", "--config_server_port", "70000"], "70000 is not a port"),
        (["node_agents.simengine", "--run_mode", "prefill", "--port", "0"], "0 is not a port"),
        (["pdmaster", "--model_dir", "/nonexistent"], "--model_dir /nonexistent: no tokenizer"),
        (["node_agents", "--run_mode", "prefill", "--host", "10.0.0.2"], "set pd_master or"),
    ],
)
def test_a_bad_value_at_start_up_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    done = run(*argv)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("pdmaster", "--port PORT           (default: 60011)"),
        ("config_server", "(default: 60088)"),
        ("node_agents.simengine", "(default: 60011)"),
        ("benchmark_client", "(default: 2000)"),
    ],
)
def test_help_shows_defaults(command: str, shown: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0 and shown in done.stdout


def test_help_never_shows_a_token_from_the_environment() -> None:
    env = {"PYTHONPATH": str(REPO_ROOT), "PDCTL_ADMIN_TOKEN": "s3cret-admin"}
    done = subprocess.run(
        [sys.executable, "-m", "pdmaster", "--help"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and "s3cret-admin" not in done.stdout


def test_master_takes_lightllms_node_flags_as_its_pd_master_does(procs: ProcGroup) -> None:
    port = free_port()
    master = procs.python(
        "master", "-m", "pdmaster", "--host", "127.0.0.1", "--port", str(port),
        "--tp", "8", "--dp", "8", "--enable_fa3", "--mem_fraction", "0.9",
        "--mode", "triton_flashdecoding", "ppl_int8kv",
    )  # fmt: skip
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 20, "the master")
    assert httpx.get(f"http://127.0.0.1:{port}/readiness", timeout=2).status_code in (200, 503)
    assert "--enable_fa3" in master.log() and "--mem_fraction" in master.log()


def test_simulated_engine_refuses_a_flag_lightllm_does_not_have() -> None:
    done = run("node_agents.simengine", "--run_mode", "prefill", "--enable_fa4")
    assert done.returncode == 2 and "--enable_fa4" in done.stderr
