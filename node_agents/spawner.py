"""Starting the engine as its own process group, with its output in rotating log files.

``EngineProcess`` asks a ``Spawner`` for a ``Child`` and only ever polls it and signals its
process group, so tests swap in a fake spawner and drive every transition without
processes or sleeping. ``ProcessSpawner`` is the real one: a new session (the child leads
its own process group, so stopping the group leaves no orphans), stdout and stderr copied
by two threads into ``engine.stdout.log`` and ``engine.stderr.log``, rotated by size.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Protocol

TAIL_LINES = 20
TAIL_BYTES = 8192
PUMP_DRAIN_S = 0.5  # how long an exit waits for the last of the engine's output


def tail_lines(path: Path, lines: int, start: int = 0, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The last ``lines`` non-empty lines of a file past offset ``start`` (where one run's
    output began; 0 if the file was rotated since), within its last ``max_bytes``."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(end - max_bytes, start if start <= end else 0))
            data = f.read()
    except OSError:
        return []
    text = data.decode(errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


class SpawnError(OSError):
    """The engine's program could not be started (missing, not executable, ...)."""


class Child(Protocol):
    pid: int

    def poll(self) -> int | None:
        """The group leader's exit status once it has exited (negative: killed by signal)."""

    def group_alive(self) -> bool:
        """Whether any process of the child's process group is still alive."""

    def signal_group(self, signum: int) -> None:
        """Send a signal to every process of the child's process group."""


class Spawner(Protocol):
    def spawn(self, argv: list[str], env: Mapping[str, str]) -> Child: ...


class RotatingFile:
    """Appends bytes to ``path``; past ``max_bytes`` it shifts path -> path.1 -> path.2 ..."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        while data:
            room = self._max_bytes - self._size
            if room <= 0 or (self._size and len(data) > room and b"\n" not in data[:room]):
                self._rotate()
                continue
            cut = len(data) if len(data) <= room else data.rfind(b"\n", 0, room) + 1 or room
            self._file.write(data[:cut])
            self._size += cut
            data = data[cut:]
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("wb")
        self._size = 0

    def close(self) -> None:
        self._file.close()


def pump(stream: IO[bytes], sink: RotatingFile) -> None:
    """Copy a pipe into a log file until every writer has closed it."""
    try:
        while chunk := os.read(stream.fileno(), 65536):
            sink.write(chunk)
    finally:
        stream.close()
        sink.close()


def live_group_members(pgid: int, proc: Path = Path("/proc")) -> list[int]:
    """Processes of a group that are not zombies. An orphaned worker that was killed stays
    a zombie in its group until init reaps it, and ``killpg(pgid, 0)`` still finds it."""
    if not proc.is_dir():
        return [pgid]  # no /proc: trust killpg
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class PopenChild:
    def __init__(
        self, popen: subprocess.Popen[bytes], pumps: list[threading.Thread], stderr_start: int
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.pumps = pumps
        self.stderr_start = stderr_start  # where this run's stderr begins in its log file

    def poll(self) -> int | None:
        return self._popen.poll()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return bool(live_group_members(self.pid))

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass


class ProcessSpawner:
    def __init__(
        self,
        log_dir: Path,
        max_bytes: int,
        backups: int,
        base_env: Mapping[str, str],
        name: str = "engine",
    ) -> None:
        self._log_dir = log_dir
        self._max_bytes = max_bytes
        self._backups = backups
        self._base_env = dict(base_env)
        self._name = name

    def log_path(self, stream: str) -> Path:
        return self._log_dir / f"{self._name}.{stream}.log"

    def stderr_tail(self, child: Child | None, lines: int = TAIL_LINES) -> list[str]:
        """The last lines the engine wrote to stderr (after its pipes drained): the cause
        of an exit, such as ``No module named 'lightllm'``."""
        if not isinstance(child, PopenChild):
            return []
        for thread in child.pumps:
            thread.join(PUMP_DRAIN_S)
        return tail_lines(self.log_path("stderr"), lines, child.stderr_start)

    def spawn(self, argv: list[str], env: Mapping[str, str]) -> PopenChild:
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**self._base_env, **env},
                start_new_session=True,
            )
        except OSError as exc:
            raise SpawnError(exc.errno, f"cannot start {argv[0]!r}: {exc.strerror}") from None
        pumps = []
        stderr_path = self.log_path("stderr")
        stderr_start = stderr_path.stat().st_size if stderr_path.exists() else 0
        for stream, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            assert pipe is not None
            sink = RotatingFile(self.log_path(stream), self._max_bytes, self._backups)
            thread = threading.Thread(
                target=pump, args=(pipe, sink), name=f"{self._name}-{stream}", daemon=True
            )
            thread.start()
            pumps.append(thread)
        return PopenChild(popen, pumps, stderr_start)
