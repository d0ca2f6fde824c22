"""Starting ``python -m node_agents`` as a real process for tests, and asking it things.

Every engine pid an agent reported is remembered, so ``reap`` can make sure no engine
outlives its test even when an agent was killed before it could stop its engine.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pdcluster.formats import dump_toml
from pdlocal.cluster import FAST_TIMING, Proc, ProcGroup, free_port
from tests.node_agents.procutil import alive, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def sim_node_config(
    workdir: Path,
    name: str,
    role: str,
    host: str,
    *,
    pd_master: str | None = None,
    config_server: str | None = None,
    timing: list[str] = FAST_TIMING,
) -> dict[str, Any]:
    """An agent running the simulated engine, with test-sized timings."""
    extra = ["--pd_reconnect_s", "0.3", *timing]
    if role == "decode":
        extra += ["--pd_decode_rpyc_port", str(free_port(host))]
    config: dict[str, Any] = {
        "role": role,
        "engine": "sim",
        "host": host,
        "port": free_port(host),
        "nccl_port": free_port(host),
        "tp": 1,
        "dp": 1,
        "python": sys.executable,
        "extra_args": extra,
        "env": {"PYTHONPATH": str(REPO_ROOT)},
        "restart": {
            "startsecs": 0.3,
            "startretries": 2,
            "backoff_s": 0.2,
            "backoff_cap_s": 1.0,
            "stopwaitsecs": 2.0,
        },
        "health": {"interval_s": 0.2, "timeout_s": 0.5, "failures": 3},
        "api": {"host": "127.0.0.1", "port": free_port()},
        "registration": {"ttl_s": 5, "node_id": name},
        "logs": {"dir": str(workdir / f"{name}-logs")},
    }
    if pd_master:
        config["pd_master"] = pd_master
    if config_server:
        config["config_server"] = config_server
    return config


@dataclass
class AgentProc:
    proc: Proc
    config: dict[str, Any]
    token: str | None = None
    engine_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['api']['port']}"

    @property
    def engine_url(self) -> str:
        return f"http://{self.config['host']}:{self.config['port']}"

    @property
    def address(self) -> str:
        return f"{self.config['host']}:{self.config['port']}"

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Plain HTTP on loopback: ``verify=False`` spares each call (and each poll of
        ``wait_state``) the ~50 ms of CPU that loading the CA bundle costs."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = f"{self.url}{path}"
        return httpx.request(method, url, headers=headers, timeout=5, verify=False, **kwargs)

    def status(self) -> dict[str, Any]:
        body = self.call("GET", "/status").json()
        if body["engine"]["pid"]:
            self.engine_pids.add(body["engine"]["pid"])
        return body

    def wait_state(self, state: str, timeout: float = 20.0, **expect: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            if not self.proc.alive():
                raise AssertionError(f"agent exited early:\n{self.proc.log()[-3000:]}")
            try:
                seen.update(self.status())
            except httpx.HTTPError:
                return False
            engine = seen["engine"]
            return seen["state"] == state and all(engine.get(k) == v for k, v in expect.items())

        wait_for(reached, timeout, f"agent state {state} {expect or ''}", step=0.05)
        return seen

    def reap(self) -> None:
        """SIGKILL any engine this agent started that is still alive (a failed test's)."""
        for pid in self.engine_pids:
            if alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start_agent(
    group: ProcGroup, name: str, config: dict[str, Any], env: dict[str, str] | None = None
) -> AgentProc:
    path = group.workdir / f"{name}.toml"
    path.write_text(dump_toml(config))
    run_env = {"PYTHONPATH": str(REPO_ROOT), **(env or {})}
    proc = group.python(name, "-m", "node_agents", "--config", str(path), env=run_env)
    return AgentProc(proc, config, token=run_env.get("PDCTL_AGENT_TOKEN"))
