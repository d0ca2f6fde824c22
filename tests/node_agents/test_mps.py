"""MPS daemon control against a fake ``nvidia-cuda-mps-control`` on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agents.mps import MpsDaemon, MpsError
from tests.node_agents.fake_mps import calls, install


@pytest.fixture
def fake(tmp_path: Path) -> dict:
    log, state = tmp_path / "calls.jsonl", tmp_path / "daemon"
    return {"log": log, "state": state, "env": install(tmp_path / "bin", log, state)}


def commands(log: Path) -> list[tuple[str, ...]]:
    return [tuple(c["argv"]) or (c["stdin"].strip(),) for c in calls(log)]


def test_start_runs_the_daemon_and_stop_quits_it(fake: dict) -> None:
    mps = MpsDaemon(fake["env"], sleep=lambda _: None)
    mps.start()
    assert mps.started_by_us and fake["state"].exists()
    mps.stop()
    assert not fake["state"].exists()
    assert commands(fake["log"]) == [("get_server_list",), ("-d",), ("get_server_list",), ("quit",)]


def test_running_daemon_is_left_alone(fake: dict) -> None:
    fake["state"].touch()
    mps = MpsDaemon(fake["env"], sleep=lambda _: None)
    mps.start()
    mps.stop()
    assert not mps.started_by_us and fake["state"].exists()
    assert commands(fake["log"]) == [("get_server_list",)]


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    mps = MpsDaemon({"PATH": str(tmp_path)})
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control is not on PATH"):
        mps.start()


def test_failing_daemon_start_reports_its_exit_status_and_output(tmp_path: Path) -> None:
    env = install(tmp_path / "bin", tmp_path / "log", tmp_path / "state", mode="fail_start")
    with pytest.raises(MpsError, match="exit status 1: An instance of this daemon"):
        MpsDaemon(env, sleep=lambda _: None).start()


def test_daemon_that_never_answers_is_an_error(tmp_path: Path) -> None:
    env = install(tmp_path / "bin", tmp_path / "log", tmp_path / "state", mode="silent_daemon")
    with pytest.raises(MpsError, match="no MPS control daemon answers"):
        MpsDaemon(env, sleep=lambda _: None, start_checks=2).start()
