"""Starting and stopping pdctl's processes on loopback, for benchmarks and tests.

``ProcGroup`` starts a master and simulated nodes as real processes (each in its own
process group, logging to a file) and stops every one of them; ``cpu_seconds`` and
``rss_bytes`` (``tree_*``: with its child processes) read a process's use from /proc.

The HTTP calls here are plain HTTP on loopback, made with ``verify=False``: an httpx client
built to verify loads the whole CA bundle (~50 ms of CPU), which made every poll of a
starting process cost as much CPU as the wait between polls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a router may run workers as child processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` and the processes below it."""
    return sum(_or_zero(cpu_seconds, p) for p in process_tree(pid))


def tree_rss_bytes(pid: int) -> int:
    return int(sum(_or_zero(rss_bytes, p) for p in process_tree(pid)))


def _or_zero(read: Callable[[int], float], pid: int) -> float:
    try:
        return read(pid)
    except OSError:
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, verify=False).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.popen is not None
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        self.kill(signal.SIGTERM)
        self.reap(timeout)

    def reap(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` for the process to end, then SIGKILL its group."""
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class ProcGroup:
    """Processes a test started; ``stop_all`` stops every one of them."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def python(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, [sys.executable, *args], self.workdir / f"{name}.log").start(env)
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM every process at once (they shut down side by side), then reap each;
        whichever is not gone ``timeout`` s after the signal gets SIGKILL."""
        for proc in reversed(self.procs):
            proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            proc.reap(max(deadline - time.monotonic(), 0.01))

    def dump_logs(self, tail: int = 40) -> str:
        out = []
        for proc in self.procs:
            lines = proc.log().splitlines()[-tail:]
            out.append(f"----- {proc.name} -----\n" + "\n".join(lines))
        return "\n".join(out)


FAST_TIMING = [
    "--prefill_base_ms",
    "2",
    "--prefill_per_token_us",
    "10",
    "--decode_base_ms",
    "5",
    "--decode_per_seq_us",
    "20",
]


@dataclass
class SimNodeProc:
    mode: str
    host: str
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.url}/sim/stats", timeout=2, verify=False).json()
        return stats


def start_master_proc(group: ProcGroup, name: str, port: int, *args: str) -> Proc:
    """``python -m pdmaster`` on 127.0.0.1:``port``, waiting until it answers /health."""
    argv = ["-m", "pdmaster", "--host", "127.0.0.1", "--port", str(port), *args]
    proc = group.python(name, *argv)
    url = f"http://127.0.0.1:{port}/health"
    wait_until(lambda: http_ok(url), 20, f"{name} to answer /health")
    return proc


def start_sim_node(group: ProcGroup, mode: str, index: int, host: str, *args: str) -> SimNodeProc:
    """A simulated node on ``host`` (free ports; decode nodes get a KV hand-off port);
    ``args`` say where its masters are, its timing and anything else."""
    port = free_port(host)
    argv = ["-m", "node_agents.simengine", "--run_mode", mode, "--host", host, "--port", str(port)]
    argv += ["--pd_reconnect_s", "0.5", *args]
    if mode == "decode":
        argv += ["--pd_decode_rpyc_port", str(free_port(host))]
    return SimNodeProc(mode, host, port, group.python(f"{mode}{index}", *argv))


@dataclass
class Cluster:
    group: ProcGroup
    master_port: int = 0
    master: Proc | None = None
    nodes: list[SimNodeProc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.master_port}"

    def start_master(self, *extra: str) -> None:
        self.master_port = free_port()
        self.master = start_master_proc(self.group, "master", self.master_port, *extra)

    def add_node(
        self, mode: str, index: int, *extra: str, timing: list[str] = FAST_TIMING
    ) -> SimNodeProc:
        host = f"127.0.0.{10 + index + (0 if mode == 'prefill' else 50)}"
        masters = ["--pd_master_ip", "127.0.0.1", "--pd_master_port", str(self.master_port)]
        node = start_sim_node(self.group, mode, index, host, *masters, *timing, *extra)
        self.nodes.append(node)
        return node

    def wait_ready(self, prefill: int, decode: int, timeout: float = 20) -> None:
        def ready() -> bool:
            try:
                body = httpx.get(f"{self.url}/readiness", timeout=1, verify=False).json()
            except httpx.HTTPError:
                return False
            return bool(body.get("prefill_nodes") == prefill and body.get("decode_nodes") == decode)

        wait_until(ready, timeout, f"{prefill} prefill + {decode} decode nodes to join")

    def node(self, mode: str, index: int = 0) -> SimNodeProc:
        return [n for n in self.nodes if n.mode == mode][index]


async def until_serving(url: str, started: float, timeout: float, poll_s: float = 0.05) -> float:
    """Seconds from ``started`` (``time.monotonic()``) until a ``/generate`` through the
    master at ``url`` succeeds."""
    body = {"inputs": "Are you back?", "parameters": {"max_new_tokens": 4}}
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() - started < timeout:
            try:
                if (await client.post(f"{url}/generate", json=body)).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(poll_s)
    raise AssertionError(f"not serving {timeout} s after {url} was asked")
