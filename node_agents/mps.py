"""CUDA MPS control daemon: started before the engine, stopped after it if we started it.

LightLLM's scripts run ``nvidia-cuda-mps-control -d`` before every engine. Starting is
idempotent here: when a daemon already answers (another agent, or the operator, started it)
we leave it alone, and only a daemon this agent started is told ``quit`` on shutdown.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

BINARY = "nvidia-cuda-mps-control"


class MpsError(RuntimeError):
    """The MPS control binary is missing, or its daemon failed to start."""


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str


Runner = Callable[[list[str], str | None, Mapping[str, str], float], Outcome]


def run_command(
    argv: list[str], stdin: str | None, env: Mapping[str, str], timeout: float
) -> Outcome:
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(-1, f"no answer within {timeout:g} s")
    return Outcome(done.returncode, (done.stdout + done.stderr).strip())


class MpsDaemon:
    def __init__(
        self,
        env: Mapping[str, str],
        run: Runner = run_command,
        sleep: Callable[[float], None] = time.sleep,
        timeout_s: float = 10.0,
        start_checks: int = 20,
    ) -> None:
        self._env = env
        self._run = run
        self._sleep = sleep
        self._timeout_s = timeout_s
        self._start_checks = start_checks
        self.started_by_us = False

    def binary(self) -> str:
        found = shutil.which(BINARY, path=self._env.get("PATH"))
        if found is None:
            raise MpsError(
                f"{BINARY} is not on PATH ({self._env.get('PATH', '')!r}); install the NVIDIA "
                "driver's MPS tools or set mps = false"
            )
        return found

    def running(self) -> bool:
        """A daemon answers a control query (the client fails when there is none)."""
        outcome = self._run([self.binary()], "get_server_list\n", self._env, self._timeout_s)
        return outcome.returncode == 0

    def start(self) -> None:
        binary = self.binary()
        if self.running():
            log.info("MPS control daemon already running; leaving it to its owner")
            return
        outcome = self._run([binary, "-d"], None, self._env, self._timeout_s)
        if outcome.returncode != 0:
            raise MpsError(
                f"{binary} -d failed with exit status {outcome.returncode}: {outcome.output}"
            )
        for _ in range(self._start_checks):  # -d forks the daemon; give it a moment to answer
            if self.running():
                self.started_by_us = True
                log.info("started the MPS control daemon")
                return
            self._sleep(0.1)
        raise MpsError(f"{binary} -d exited 0 but no MPS control daemon answers")

    def stop(self) -> None:
        """``echo quit | nvidia-cuda-mps-control``, only for a daemon this agent started."""
        if not self.started_by_us:
            return
        outcome = self._run([self.binary()], "quit\n", self._env, self._timeout_s)
        self.started_by_us = False
        if outcome.returncode != 0:
            raise MpsError(
                f"MPS quit failed with exit status {outcome.returncode}: {outcome.output}"
            )
        log.info("stopped the MPS control daemon")
