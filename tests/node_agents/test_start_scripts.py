"""Every start_scripts/*.sh is shell-clean, and pd_{prefill,decode}.sh start the agent
LightLLM's scripts describe (checked through the agent's --dry-run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = {"prefill": ("8019", "2732"), "decode": ("8121", "12322")}


def script(role: str, mode: str = "") -> str:
    return str(REPO_ROOT / "start_scripts" / mode / f"pd_{role}.sh")


def run(role: str, *args: str, mode: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(
        ["bash", script(role, mode), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=30,
    )


ALL_SCRIPTS = sorted(
    str(p.relative_to(REPO_ROOT / "start_scripts"))
    for p in (REPO_ROOT / "start_scripts").rglob("*.sh")
)


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_script_passes_bash_n_and_shellcheck(name: str) -> None:
    path = str(REPO_ROOT / "start_scripts" / name)
    subprocess.run(["bash", "-n", path], check=True, timeout=10)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("role", SCRIPTS)
def test_script_runs_lightllm_with_the_scripts_ports(role: str) -> None:
    port, nccl = SCRIPTS[role]
    done = run(role, "10.0.0.2", "10.0.0.1", "--dry-run", MODEL_DIR="/models/ds")
    assert done.returncode == 0, done.stderr
    first, command = done.stdout.split("\n", 1)
    assert first == "nvidia-cuda-mps-control -d"
    words = command.replace("\\\n", " ").split()
    assert "lightllm.server.api_server" in words
    for flag, value in [
        ("--run_mode", role), ("--host", "10.0.0.2"), ("--port", port), ("--nccl_port", nccl),
        ("--config_server_host", "10.0.0.1"), ("--config_server_port", "60088"),
        ("--model_dir", "/models/ds"), ("--tp", "8"), ("--dp", "8"),
    ]:  # fmt: skip
        assert words[words.index(flag) + 1] == value


@pytest.mark.parametrize("role", SCRIPTS)
def test_engine_sim_runs_the_simulated_engine_without_mps(role: str) -> None:
    done = run(role, "127.0.0.2", "127.0.0.1", "--dry-run", "--", "--profile", "demo", ENGINE="sim")
    assert done.returncode == 0, done.stderr
    assert "-m node_agents.simengine" in done.stdout and "mps" not in done.stdout
    assert done.stdout.rstrip().endswith("--profile demo")


def test_lightllm_needs_a_model_dir_and_both_hosts() -> None:
    done = run("prefill", "10.0.0.2", "10.0.0.1", "--dry-run", MODEL_DIR="")
    assert done.returncode == 2 and "set MODEL_DIR" in done.stderr
    done = run("decode", "10.0.0.2")
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.parametrize("role", SCRIPTS)
def test_single_master_scripts_take_lightllms_arguments(role: str) -> None:
    """LightLLM's single_pd_master scripts: ``pd_prefill.sh <host> <pd_master_ip>``."""
    port, nccl = SCRIPTS[role]
    done = run(role, "10.0.0.2", "10.0.0.1", "--dry-run", mode="single_pd_master", MODEL_DIR="/m")
    assert done.returncode == 0, done.stderr
    words = done.stdout.replace("\\\n", " ").split()
    for flag, value in [
        ("--run_mode", role), ("--host", "10.0.0.2"), ("--port", port), ("--nccl_port", nccl),
        ("--pd_master_ip", "10.0.0.1"), ("--pd_master_port", "60011"),
    ]:  # fmt: skip
        assert words[words.index(flag) + 1] == value
    assert "KV_TRANS_USE_P2P=1" in words and "--config_server_host" not in words
    done = run(role, "10.0.0.2", mode="single_pd_master", ENGINE="sim")
    assert done.returncode == 2 and "<pd_master_ip>" in done.stderr


def test_single_master_pd_master_takes_one_argument() -> None:
    path = str(REPO_ROOT / "start_scripts" / "single_pd_master" / "pd_master.sh")
    done = subprocess.run(["bash", path], capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and "usage:" in done.stderr and "<pd_master_ip>" in done.stderr
