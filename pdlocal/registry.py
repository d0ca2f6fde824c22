"""Starting etcd and config servers as real processes on loopback, for tests and benchmarks.

Every process joins a ``ProcGroup`` (see ``pdlocal.cluster``), which stops
them all; etcd keeps its data directory across ``restart()`` so its history survives.
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx

from pdlocal.cluster import Proc, ProcGroup, free_port, http_ok, wait_until


def etcd_binary() -> str | None:
    """The etcd server binary (Debian package ``etcd-server``), or None."""
    found = shutil.which("etcd")
    if found:
        return found
    return "/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None


def etcd_healthy(url: str) -> bool:
    try:
        body = httpx.get(f"{url}/health", timeout=1.0, verify=False).json()  # loopback HTTP
        return bool(body.get("health") == "true")
    except (httpx.HTTPError, ValueError):
        return False


@dataclass
class EtcdServer:
    """One etcd member on free loopback ports with its own data directory."""

    group: ProcGroup
    binary: str
    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        if not self.client_port:
            self.client_port, self.peer_port = free_port(), free_port()
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name=pdctl",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=pdctl={peer_url}",
            "--logger=zap",
            "--log-level=warn",
        ]
        log_path = self.group.workdir / "etcd.log"
        self.proc = Proc("etcd", argv, log_path).start()
        self.group.procs.append(self.proc)
        wait_until(lambda: etcd_healthy(self.url), timeout, "etcd to report healthy")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill(signal.SIGKILL)
            assert self.proc.popen is not None
            self.proc.popen.wait(10)

    def restart(self, timeout: float = 20.0) -> None:
        """Kill etcd and start it again on the same ports and data directory."""
        self.kill()
        self.start(timeout)


@dataclass
class ConfigServer:
    proc: Proc
    port: int
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def start_config_server(
    group: ProcGroup,
    *args: str,
    name: str = "config_server",
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> ConfigServer:
    """``python -m config_server`` on 127.0.0.1, waiting until /readiness answers 200."""
    port = port or free_port()
    proc = group.python(
        name,
        "-m",
        "config_server",
        "--config_server_host",
        "127.0.0.1",
        "--config_server_port",
        str(port),
        *args,
        env=env,
    )
    server = ConfigServer(proc, port)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{name} exited early:\n{proc.log()[-2000:]}")
        return http_ok(f"{server.url}/readiness")

    wait_until(ready, timeout, f"{name} to be ready")
    return server
