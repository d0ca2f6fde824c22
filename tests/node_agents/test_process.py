"""The engine's state machine, one test per transition, on a fake clock and spawner."""

from __future__ import annotations

import signal

import pytest

from node_agents.config import RestartPolicy
from node_agents.lightllm_cmd import EngineCommand
from node_agents.process import EngineProcess, State, Transition, TransitionError
from tests.node_agents.fakes import FakeClock, FakeSpawner

POLICY = RestartPolicy(
    startsecs=5,
    startretries=3,
    backoff_s=1,
    backoff_cap_s=4,
    backoff_reset_s=60,
    startup_timeout_s=100,
    stop_signal="TERM",
    stopwaitsecs=10,
)


class Rig:
    def __init__(self, policy: RestartPolicy = POLICY) -> None:
        self.clock = FakeClock()
        self.spawner = FakeSpawner()
        self.changes: list[Transition] = []
        self.proc = EngineProcess(
            EngineCommand(["engine"], {"A": "1"}),
            policy,
            self.spawner,
            self.clock,
            self.changes.append,
        )

    def run_to_running(self) -> None:
        if self.proc.state is not State.STARTING:
            self.proc.start()
        self.proc.note_health(True)
        self.clock.advance(POLICY.startsecs)
        self.proc.tick()
        assert self.proc.state is State.RUNNING

    def path(self) -> list[str]:
        return [c.new.value for c in self.changes]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_stopped_to_starting_on_start(rig: Rig) -> None:
    assert rig.proc.start()
    assert rig.proc.state is State.STARTING and rig.proc.pid == rig.spawner.last.pid
    assert rig.path() == ["STARTING"]


def test_starting_to_running_after_startsecs_and_a_health_answer(rig: Rig) -> None:
    rig.proc.start()
    rig.proc.note_health(True)
    rig.clock.advance(4.9)
    rig.proc.tick()
    assert rig.proc.state is State.STARTING
    rig.clock.advance(0.1)
    rig.proc.tick()
    assert rig.proc.state is State.RUNNING


def test_starting_stays_starting_until_health_answers(rig: Rig) -> None:
    rig.proc.start()
    rig.clock.advance(50)
    rig.proc.note_health(False)
    rig.proc.tick()
    assert rig.proc.state is State.STARTING
    rig.proc.note_health(True)
    rig.proc.tick()
    assert rig.proc.state is State.RUNNING


def test_starting_to_backoff_when_exit_is_too_quick(rig: Rig) -> None:
    rig.proc.start()
    rig.clock.advance(1)
    rig.spawner.last.exit(1)
    rig.proc.tick()
    assert rig.proc.state is State.BACKOFF and rig.proc.quick_failures == 1
    assert rig.proc.last_exit is not None and rig.proc.last_exit.status == 1
    assert rig.proc.snapshot()["retry_in_s"] == 1


def test_backoff_to_starting_after_the_delay(rig: Rig) -> None:
    rig.proc.start()
    rig.spawner.last.exit(1)
    rig.proc.tick()
    rig.clock.advance(0.9)
    rig.proc.tick()
    assert rig.proc.state is State.BACKOFF
    rig.clock.advance(0.1)
    rig.proc.tick()
    assert rig.proc.state is State.STARTING and len(rig.spawner.children) == 2


def test_backoff_delay_doubles_up_to_the_cap(rig: Rig) -> None:
    rig.proc.start()
    delays = []
    for _ in range(3):
        rig.spawner.last.exit(1)
        rig.proc.tick()
        delays.append(rig.proc.snapshot()["retry_in_s"])
        rig.clock.advance(delays[-1])
        rig.proc.tick()
    assert delays == [1, 2, 4]
    rig.run_to_running()
    rig.spawner.last.exit(1)
    rig.proc.tick()  # the streak lives on until a stable run: this exit waits the cap
    assert rig.proc.state is State.BACKOFF and rig.proc.snapshot()["retry_in_s"] == 4


def test_backoff_to_fatal_after_startretries_quick_failures(rig: Rig) -> None:
    rig.proc.start()
    for _ in range(POLICY.startretries + 1):
        rig.spawner.last.exit(1)
        rig.proc.tick()
        rig.clock.advance(10)
        rig.proc.tick()
    assert rig.proc.state is State.FATAL
    assert len(rig.spawner.children) == POLICY.startretries + 1
    assert rig.path()[-2:] == ["BACKOFF", "FATAL"]
    rig.clock.advance(1000)
    rig.proc.tick()
    assert rig.proc.state is State.FATAL and len(rig.spawner.children) == 4


def test_fatal_to_starting_on_start_forgets_the_failures(rig: Rig) -> None:
    test_backoff_to_fatal_after_startretries_quick_failures(rig)
    assert rig.proc.start()
    assert rig.proc.state is State.STARTING and rig.proc.quick_failures == 0


def test_running_to_exited_then_starting_at_once_on_a_first_crash(rig: Rig) -> None:
    rig.run_to_running()
    rig.clock.advance(120)
    rig.spawner.last.exit(-9)
    rig.proc.tick()
    assert rig.path()[-3:] == ["RUNNING", "EXITED", "STARTING"]
    assert rig.proc.restarts == 1
    assert rig.changes[-2].reason == "killed by SIGKILL"


def test_running_to_exited_then_backoff_when_it_crashes_again_soon(rig: Rig) -> None:
    rig.run_to_running()
    rig.spawner.last.exit(1)
    rig.proc.tick()
    rig.run_to_running()
    rig.clock.advance(10)
    rig.spawner.last.exit(1)
    rig.proc.tick()
    assert rig.path()[-2:] == ["EXITED", "BACKOFF"]
    assert rig.proc.snapshot()["retry_in_s"] == 2


def test_a_stable_run_resets_the_backoff(rig: Rig) -> None:
    rig.run_to_running()
    rig.spawner.last.exit(1)
    rig.proc.tick()
    rig.run_to_running()
    rig.clock.advance(POLICY.backoff_reset_s)
    rig.spawner.last.exit(1)
    rig.proc.tick()
    assert rig.path()[-2:] == ["EXITED", "STARTING"]


def test_exit_kills_what_is_left_of_the_process_group(rig: Rig) -> None:
    rig.run_to_running()
    child = rig.spawner.last
    child.exit(1, group_too=False)
    rig.proc.tick()
    assert child.signals == [signal.SIGKILL]


def test_running_to_stopping_sends_the_stop_signal_to_the_group(rig: Rig) -> None:
    rig.spawner.dies_on = frozenset({9})
    rig.run_to_running()
    assert rig.proc.stop()
    assert rig.proc.state is State.STOPPING
    assert rig.spawner.last.signals == [signal.SIGTERM]


def test_stopping_to_stopped_when_the_group_is_gone(rig: Rig) -> None:
    rig.run_to_running()
    rig.proc.stop()
    rig.proc.tick()
    assert rig.proc.state is State.STOPPED and rig.proc.pid is None


def test_stopping_kills_the_group_after_stopwaitsecs(rig: Rig) -> None:
    rig.spawner.dies_on = frozenset({9})
    rig.run_to_running()
    rig.proc.stop()
    rig.clock.advance(POLICY.stopwaitsecs - 0.1)
    rig.proc.tick()
    assert rig.spawner.last.signals == [signal.SIGTERM]
    rig.clock.advance(0.1)
    rig.proc.tick()
    assert rig.spawner.last.signals == [signal.SIGTERM, signal.SIGKILL]
    rig.proc.tick()
    assert rig.proc.state is State.STOPPED


def test_stopping_waits_for_the_whole_group_not_just_the_leader(rig: Rig) -> None:
    rig.spawner.dies_on = frozenset()
    rig.run_to_running()
    rig.proc.stop()
    rig.spawner.last.exit(0, group_too=False)
    rig.proc.tick()
    assert rig.proc.state is State.STOPPING
    rig.clock.advance(POLICY.stopwaitsecs)
    rig.proc.tick()
    assert rig.spawner.last.signals[-1] == signal.SIGKILL
    rig.spawner.last.group = False
    rig.proc.tick()
    assert rig.proc.state is State.STOPPED


def test_stopping_to_starting_on_restart(rig: Rig) -> None:
    rig.run_to_running()
    rig.proc.restart("health")
    assert rig.proc.state is State.STOPPING
    rig.proc.tick()
    assert rig.path()[-2:] == ["STOPPING", "STARTING"]
    assert len(rig.spawner.children) == 2


def test_starting_too_long_is_stopped_and_counts_as_a_failed_start(rig: Rig) -> None:
    rig.proc.start()
    rig.clock.advance(POLICY.startup_timeout_s)
    rig.proc.tick()
    assert rig.proc.state is State.STOPPING
    rig.proc.tick()
    assert rig.proc.state is State.BACKOFF and rig.proc.quick_failures == 1


def test_spawn_error_goes_to_backoff(rig: Rig) -> None:
    rig.spawner.fail_with = "cannot start 'python': No such file or directory"
    rig.proc.start()
    assert rig.path() == ["STARTING", "BACKOFF"]
    assert rig.proc.last_exit is not None and "No such file" in rig.proc.last_exit.reason


def test_backoff_to_stopped_on_stop(rig: Rig) -> None:
    rig.proc.start()
    rig.spawner.last.exit(1)
    rig.proc.tick()
    assert rig.proc.stop()
    assert rig.proc.state is State.STOPPED


def test_stop_while_stopped_or_fatal_changes_nothing(rig: Rig) -> None:
    assert not rig.proc.stop()
    assert rig.changes == []


def test_start_while_running_changes_nothing(rig: Rig) -> None:
    rig.run_to_running()
    assert not rig.proc.start()
    assert len(rig.spawner.children) == 1


def test_disallowed_transition_is_refused(rig: Rig) -> None:
    with pytest.raises(TransitionError, match="STOPPED -> RUNNING is not allowed"):
        rig.proc._change(State.RUNNING, "no")


def test_snapshot_reports_history_and_counters(rig: Rig) -> None:
    rig.run_to_running()
    snap = rig.proc.snapshot()
    assert snap["state"] == "RUNNING" and snap["restarts"] == 0 and snap["pid"] == 100
    assert [h["to"] for h in snap["history"]] == ["STARTING", "RUNNING"]
