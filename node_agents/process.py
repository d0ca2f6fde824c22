"""The engine's life as Supervisor's state machine, driven by ``tick()`` and an injected clock.

::

    STOPPED --start--> STARTING --up startsecs and /health answered--> RUNNING
    STARTING --exit (quick failure)--> BACKOFF --delay--> STARTING
    BACKOFF --more than startretries quick failures in a row--> FATAL
    RUNNING --exit--> EXITED --> STARTING (first crash after a stable run) or BACKOFF
    STARTING/RUNNING --stop/restart--> STOPPING --group gone--> STOPPED or STARTING
    STOPPING --stopwaitsecs passed--> SIGKILL to the process group, still STOPPING

The delay before a restart doubles with every exit in a row (``backoff_s`` up to
``backoff_cap_s``); a run of ``backoff_reset_s`` in RUNNING forgets the streak. State
changes only in ``_change``, which refuses transitions the table does not allow; the owner
calls ``tick()`` often (the agent: every 0.1 s) and is told of every change.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node_agents.config import RestartPolicy
from node_agents.lightllm_cmd import EngineCommand
from node_agents.spawner import Child, Spawner, SpawnError

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.STOPPING}),
    State.RUNNING: frozenset({State.EXITED, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.FATAL, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED, State.STARTING, State.BACKOFF}),
    State.EXITED: frozenset({State.STARTING, State.BACKOFF}),
    State.FATAL: frozenset({State.STARTING}),
}
SETTLED = frozenset({State.STOPPED, State.FATAL})
LIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})  # a child process exists


class TransitionError(RuntimeError):
    """A state change the table does not allow: a bug in the caller, never a runtime event."""


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str
    at: float


@dataclass(frozen=True)
class Exit:
    status: int | None  # None: it never started
    reason: str
    at: float


class EngineProcess:
    def __init__(
        self,
        command: EngineCommand,
        policy: RestartPolicy,
        spawner: Spawner,
        clock: Callable[[], float],
        on_change: Callable[[Transition], None] | None = None,
    ) -> None:
        self._command = command
        self._policy = policy
        self._spawner = spawner
        self._clock = clock
        self._on_change = on_change
        self.state = State.STOPPED
        self.child: Child | None = None
        self.starts = 0
        self.quick_failures = 0  # exits before RUNNING, in a row
        self.streak = 0  # exits in a row not separated by a run of backoff_reset_s
        self.last_exit: Exit | None = None
        self.history: deque[Transition] = deque(maxlen=20)
        self._since = clock()
        self._started_at = 0.0
        self._running_since: float | None = None
        self._health_answered = False
        self._retry_at = 0.0
        self._kill_at = 0.0
        self._killed = False
        self._then = "stop"  # after STOPPING: "stop", "restart" or "fail"

    # --- requests -------------------------------------------------------------------------

    def start(self, reason: str = "start requested") -> bool:
        if self.state not in (State.STOPPED, State.EXITED, State.FATAL, State.BACKOFF):
            return False
        self.quick_failures = self.streak = 0
        self._spawn(reason)
        return True

    def stop(self, reason: str = "stop requested") -> bool:
        if self.state is State.BACKOFF:
            self._change(State.STOPPED, reason)
            return True
        if self.state is State.STOPPING:
            self._then = "stop"
            return True
        if self.state in (State.STARTING, State.RUNNING):
            self._begin_stop("stop", reason)
            return True
        return False

    def restart(self, reason: str = "restart requested") -> None:
        """Stop the engine (if it runs) and start it again, whatever state it is in."""
        if self.state in (State.STARTING, State.RUNNING):
            self._begin_stop("restart", reason)
        elif self.state is State.STOPPING:
            self._then = "restart"
        else:
            self.start(reason)

    def note_health(self, ok: bool) -> None:
        """The health prober's verdict; a start counts only once /health has answered."""
        if ok and self.state is State.STARTING:
            self._health_answered = True

    # --- the clock's work -----------------------------------------------------------------

    def tick(self) -> None:
        now = self._clock()
        if self.state is State.STARTING:
            self._tick_starting(now)
        elif self.state is State.RUNNING:
            status = self._child().poll()
            if status is not None:
                self._on_exit(status, now)
        elif self.state is State.BACKOFF:
            if now >= self._retry_at:
                self._spawn("backoff elapsed")
        elif self.state is State.STOPPING:
            self._tick_stopping(now)

    def _tick_starting(self, now: float) -> None:
        status = self._child().poll()
        if status is not None:
            self._on_exit(status, now)
        elif now - self._started_at >= self._policy.startup_timeout_s:
            self._begin_stop("fail", f"not RUNNING after {self._policy.startup_timeout_s:g} s")
        elif self._health_answered and now - self._started_at >= self._policy.startsecs:
            self.quick_failures = 0
            self._running_since = now
            self._change(State.RUNNING, f"up {now - self._started_at:.1f} s and healthy")

    def _tick_stopping(self, now: float) -> None:
        child = self._child()
        status = child.poll()
        if status is not None and not child.group_alive():
            self._record_exit(status, now, "stopped")
            then, self._then = self._then, "stop"
            if then == "restart":
                self._spawn("restarted")
            elif then == "fail":
                self._quick_failure(now, "startup timed out")
            else:
                self._change(State.STOPPED, describe_status(status))
        elif now >= self._kill_at and not self._killed:
            log.warning(
                "engine still up %g s after the stop signal: SIGKILL", self._policy.stopwaitsecs
            )
            child.signal_group(signal.SIGKILL)
            self._killed = True

    # --- helpers --------------------------------------------------------------------------

    def _spawn(self, reason: str) -> None:
        now = self._clock()
        self._change(State.STARTING, reason)
        self.starts += 1
        self._started_at = now
        self._health_answered = False
        self._running_since = None
        try:
            self.child = self._spawner.spawn(self._command.argv, self._command.env)
        except SpawnError as exc:
            self.child = None
            self.last_exit = Exit(None, str(exc), now)
            self._quick_failure(now, str(exc))

    def _begin_stop(self, then: str, reason: str) -> None:
        self._then = then
        self._kill_at = self._clock() + self._policy.stopwaitsecs
        self._killed = False
        self._child().signal_group(self._policy.stop_signum)
        self._change(State.STOPPING, reason)

    def _on_exit(self, status: int, now: float) -> None:
        child = self._child()
        if child.group_alive():  # its workers must not outlive it (GPU memory, ports)
            child.signal_group(signal.SIGKILL)
        self._record_exit(status, now, "exited")
        if self.state is State.STARTING:
            self._quick_failure(
                now, f"{describe_status(status)} after {now - self._started_at:.1f} s"
            )
            return
        stable = self._running_since is not None and (
            now - self._running_since >= self._policy.backoff_reset_s
        )
        if stable:
            self.streak = 0
        self.streak += 1
        self._change(State.EXITED, describe_status(status))
        if self.streak == 1:
            self._spawn("restart after exit")
        else:
            self._backoff(now, f"exit {self.streak} in a row")

    def _quick_failure(self, now: float, reason: str) -> None:
        self.quick_failures += 1
        self.streak += 1
        if self.quick_failures > self._policy.startretries:
            # straight on to FATAL (through BACKOFF, as the table has it): never announce a
            # retry that will not happen
            self._change(State.BACKOFF, reason)
            self._change(
                State.FATAL,
                f"{self.quick_failures} quick failures in a row "
                f"(startretries = {self._policy.startretries}); last: {reason}",
            )
            return
        self._backoff(now, reason)

    def _backoff(self, now: float, reason: str) -> None:
        delay = min(self._policy.backoff_s * 2 ** (self.streak - 1), self._policy.backoff_cap_s)
        self._retry_at = now + delay
        self._change(State.BACKOFF, f"{reason}; retry in {delay:g} s")

    def _record_exit(self, status: int, now: float, how: str) -> None:
        self.last_exit = Exit(status, f"{how}: {describe_status(status)}", now)

    def _child(self) -> Child:
        if self.child is None:
            raise TransitionError(f"no child process in state {self.state}")
        return self.child

    def _change(self, new: State, reason: str) -> None:
        if new not in ALLOWED[self.state]:
            raise TransitionError(f"{self.state} -> {new} is not allowed ({reason})")
        transition = Transition(self.state, new, reason, self._clock())
        log.info("engine %s -> %s: %s", self.state, new, reason)
        self.state, self._since = new, transition.at
        self.history.append(transition)
        if self._on_change is not None:
            self._on_change(transition)

    # --- what others may read -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.state in LIVE else None

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    def exit_report(self) -> dict[str, Any] | None:
        """How the last process ended, and how long ago (the clock is monotonic)."""
        if self.last_exit is None:
            return None
        ago_s = round(self._clock() - self.last_exit.at, 3)
        return {"status": self.last_exit.status, "reason": self.last_exit.reason, "ago_s": ago_s}

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()

        def ago(at: float) -> float:
            return round(now - at, 3)

        return {
            "state": self.state.value,
            "pid": self.pid,
            "starts": self.starts,
            "restarts": self.restarts,
            "quick_failures": self.quick_failures,
            "in_state_s": round(now - self._since, 3),
            "retry_in_s": round(max(self._retry_at - now, 0.0), 3)
            if self.state is State.BACKOFF
            else None,
            "last_exit": self.exit_report(),
            "history": [
                {"from": t.old.value, "to": t.new.value, "reason": t.reason, "ago_s": ago(t.at)}
                for t in self.history
            ],
        }


def describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
