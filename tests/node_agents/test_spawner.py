"""Real processes: stop signal then SIGKILL, no orphans, rotating logs (small python engines)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from node_agents.config import RestartPolicy
from node_agents.lightllm_cmd import EngineCommand
from node_agents.process import EngineProcess, State
from node_agents.spawner import ProcessSpawner, RotatingFile, SpawnError
from tests.node_agents.procutil import alive, wait_for

# An engine that starts a worker in its process group, writes both pids, and then runs
# the given tail of code (e.g. ignore SIGTERM and sleep).
ENGINE = """
import os, signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}")
TAIL
"""


def engine(pid_file: Path, tail: str) -> EngineCommand:
    return EngineCommand([sys.executable, "-c", ENGINE.replace("TAIL", tail), str(pid_file)])


def supervise(proc: EngineProcess, until: set[State], timeout: float = 10.0) -> float:
    start = time.monotonic()
    deadline = start + timeout
    while proc.state not in until:
        assert time.monotonic() < deadline, f"still {proc.state} after {timeout} s"
        proc.tick()
        time.sleep(0.01)
    return time.monotonic() - start


def pids(path: Path) -> list[int]:
    wait_for(lambda: path.exists() and path.read_text().strip() != "", 10, "the engine's pids")
    return [int(p) for p in path.read_text().split()]


@pytest.fixture
def spawner(tmp_path: Path) -> ProcessSpawner:
    return ProcessSpawner(tmp_path / "logs", 8192, 2, os.environ)


def policy(startretries: int = 3) -> RestartPolicy:
    return RestartPolicy(startsecs=0, stopwaitsecs=1.0, backoff_s=0.05, startretries=startretries)


def test_engine_ignoring_the_stop_signal_is_killed_after_stopwaitsecs(
    tmp_path: Path, spawner: ProcessSpawner
) -> None:
    tail = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    pid_file = tmp_path / "pids"
    proc = EngineProcess(engine(pid_file, tail), policy(), spawner, time.monotonic)
    proc.start()
    leader, worker = pids(pid_file)
    proc.stop()
    took = supervise(proc, {State.STOPPED})
    assert 1.0 <= took < 3.0
    assert proc.last_exit is not None and proc.last_exit.status == -9
    assert not alive(leader) and not alive(worker)


def test_stop_signal_reaches_the_whole_group_and_leaves_no_orphans(
    tmp_path: Path, spawner: ProcessSpawner
) -> None:
    pid_file = tmp_path / "pids"
    proc = EngineProcess(engine(pid_file, "time.sleep(60)"), policy(), spawner, time.monotonic)
    proc.start()
    leader, worker = pids(pid_file)
    proc.stop()
    assert supervise(proc, {State.STOPPED}) < 1.0
    wait_for(lambda: not alive(worker), 2, "the worker to go")
    assert not alive(leader)


def test_crash_of_the_leader_takes_its_workers_with_it(
    tmp_path: Path, spawner: ProcessSpawner
) -> None:
    pid_file = tmp_path / "pids"
    tail = "sys.exit(3) if len(sys.argv) > 1 and os.path.getsize(sys.argv[1]) else None"
    command = engine(pid_file, "time.sleep(0.3)\n" + tail)
    proc = EngineProcess(command, policy(startretries=0), spawner, time.monotonic)
    proc.start()
    _, worker = pids(pid_file)
    supervise(proc, {State.FATAL})
    assert proc.last_exit is not None and proc.last_exit.status == 3
    wait_for(lambda: not alive(worker), 2, "the orphaned worker to be killed")


def test_engine_output_goes_to_rotating_log_files(tmp_path: Path, spawner: ProcessSpawner) -> None:
    code = (
        "import sys\nfor i in range(600): print(f'line {i:04d} ' + 'x' * 40)\n"
        "print('oops', file=sys.stderr)"
    )
    proc = EngineProcess(
        EngineCommand([sys.executable, "-c", code]), policy(startretries=0), spawner, time.monotonic
    )
    proc.start()
    child = proc.child
    supervise(proc, {State.BACKOFF, State.FATAL})
    for thread in child.pumps:  # type: ignore[union-attr]
        thread.join(5)
    out = spawner.log_path("stdout")
    rotated = [out, out.with_name(out.name + ".1"), out.with_name(out.name + ".2")]
    assert all(p.exists() and p.stat().st_size <= 8192 for p in rotated)
    assert not out.with_name(out.name + ".3").exists()
    assert out.read_text().splitlines()[-1].startswith("line 0599")
    assert spawner.log_path("stderr").read_text() == "oops\n"


def test_missing_program_is_a_spawn_error(spawner: ProcessSpawner) -> None:
    with pytest.raises(SpawnError, match="cannot start '/nonexistent/python'"):
        spawner.spawn(["/nonexistent/python"], {})


def test_rotating_file_without_backups_starts_over(tmp_path: Path) -> None:
    sink = RotatingFile(tmp_path / "x.log", 10, 0)
    sink.write(b"0123456789")
    sink.write(b"abc")
    sink.close()
    assert (tmp_path / "x.log").read_bytes() == b"abc"
    assert list(tmp_path.iterdir()) == [tmp_path / "x.log"]
