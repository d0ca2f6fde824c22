"""The README's first command: the local cluster starts, answers through both masters, and
leaves nothing running (real processes: config server, 2 masters, 4 agents, 4 engines)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

from pdlocal.cluster import free_port
from tests.conftest import REPO_ROOT

ENGINES = [("127.0.0.2", 8019), ("127.0.0.3", 8019), ("127.0.0.4", 8121), ("127.0.0.5", 8121)]


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def test_local_cluster_answers_through_both_masters_and_stops_everything(tmp_path: Path) -> None:
    masters = [free_port(), free_port()]
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO_ROOT),
        "CONFIG_SERVER_PORT": str(free_port()),
        "MASTER_PORTS": " ".join(map(str, masters)),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    run = subprocess.run(
        ["bash", str(REPO_ROOT / "start_scripts" / "local_cluster.sh"), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for port in masters:
        line = next(li for li in run.stdout.splitlines() if f"master on port {port}:" in li)
        assert '"generated_text":["What is AI?What is AI?"]' in line
    assert not [f"{h}:{p}" for h, p in ENGINES if listening(h, p)]
    assert not [p for p in masters if listening("127.0.0.1", p)]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert "config_server.log" in logs and "agent-decode1.log" in logs


def test_a_second_run_fails_at_once_and_leaves_the_first_runs_logs_alone(tmp_path: Path) -> None:
    """A port in use (here the config server's, as a first cluster would hold it) stops the
    second run before it starts anything or opens a log."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "config_server.log").write_text("the first run's log\n")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {
            **os.environ,
            "PYTHON": sys.executable,
            "PYTHONPATH": str(REPO_ROOT),
            "CONFIG_SERVER_PORT": str(port),
            "MASTER_PORTS": f"{free_port()} {free_port()}",
            "LOG_DIR": str(logs),
        }
        run = subprocess.run(
            ["bash", str(REPO_ROOT / "start_scripts" / "local_cluster.sh"), "--once"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert run.returncode == 1
    assert f"in use already (another local cluster?): 127.0.0.1:{port}" in run.stderr
    assert "cluster ready" not in run.stdout
    assert (logs / "config_server.log").read_text() == "the first run's log\n"
    assert sorted(p.name for p in logs.iterdir()) == ["config_server.log"]


def test_a_log_dir_in_use_by_a_running_cluster_is_refused(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO_ROOT),
        "CONFIG_SERVER_PORT": str(free_port()),
        "MASTER_PORTS": f"{free_port()} {free_port()}",
        "LOG_DIR": str(logs),
    }
    with (logs / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = subprocess.run(
            ["bash", str(REPO_ROOT / "start_scripts" / "local_cluster.sh"), "--once"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert f"{logs} is in use by another run" in run.stderr
