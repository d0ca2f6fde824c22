"""``local_cluster.sh --plan``: a planned cluster of multi-node simulated instances (a 2-node
prefill and a 2-node decode instance, each rank under its agent) serves a request end to end
and leaves nothing running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.start_scripts.test_local_cluster import listening

PLAN = REPO_ROOT / "deploy" / "examples" / "loopback-sim.toml"
RANKS = [("127.0.1.1", 8019), ("127.0.1.2", 8019), ("127.0.2.1", 8121), ("127.0.2.2", 8121)]


def test_a_planned_loopback_cluster_serves_and_stops_everything(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO_ROOT),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    run = subprocess.run(
        ["bash", str(REPO_ROOT / "start_scripts" / "local_cluster.sh"), "--once", "--plan", PLAN],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    answer = next(li for li in run.stdout.splitlines() if "answer from the master" in li)
    assert '"generated_text":["What is AI?What is AI?"]' in answer
    assert "instance loopback-decode-0: 2 node(s)" in run.stdout
    assert not [f"{h}:{p}" for h, p in RANKS if listening(h, p)]
    assert (tmp_path / "logs" / "plan" / "agents" / "d1.toml").is_file()


def test_a_taken_port_of_the_plan_is_named_before_anything_starts(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT),
           "LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.3.2", 60011))  # the plan's master
        taken.listen(1)
        run = subprocess.run(
            ["bash", str(REPO_ROOT / "start_scripts" / "local_cluster.sh"), "--plan", PLAN],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1
    assert "127.0.3.2:60011" in run.stderr and "change the ports in" in run.stderr
