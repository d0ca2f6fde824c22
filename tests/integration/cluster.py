"""A local PD cluster for tests: one master and simulated prefill/decode nodes on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from tests.procs import Proc, ProcGroup, free_port, http_ok, wait_until

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

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/sim/stats", timeout=2).json()


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
        self.master = self.group.python(
            "master",
            "-m",
            "pdmaster",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.master_port),
            *extra,
        )
        wait_until(lambda: http_ok(f"{self.url}/health"), 20, "the master to answer /health")

    def add_node(
        self, mode: str, index: int, *extra: str, timing: list[str] = FAST_TIMING
    ) -> SimNodeProc:
        host = f"127.0.0.{10 + index + (0 if mode == 'prefill' else 50)}"
        port = free_port(host)
        args = [
            "-m",
            "node_agents.simengine",
            "--run_mode",
            mode,
            "--host",
            host,
            "--port",
            str(port),
            "--pd_master_ip",
            "127.0.0.1",
            "--pd_master_port",
            str(self.master_port),
            "--pd_reconnect_s",
            "0.5",
            *timing,
            *extra,
        ]
        if mode == "decode":
            args += ["--pd_decode_rpyc_port", str(free_port(host))]
        node = SimNodeProc(mode, host, port, self.group.python(f"{mode}{index}", *args))
        self.nodes.append(node)
        return node

    def wait_ready(self, prefill: int, decode: int, timeout: float = 20) -> None:
        def ready() -> bool:
            try:
                body = httpx.get(f"{self.url}/readiness", timeout=1).json()
            except httpx.HTTPError:
                return False
            return body.get("prefill_nodes") == prefill and body.get("decode_nodes") == decode

        wait_until(ready, timeout, f"{prefill} prefill + {decode} decode nodes to join")

    def node(self, mode: str, index: int = 0) -> SimNodeProc:
        return [n for n in self.nodes if n.mode == mode][index]
