"""The README's first command: the local cluster starts, answers through both masters, and
leaves nothing running (real processes: config server, 2 masters, 4 agents, 4 engines)."""

from __future__ import annotations

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
