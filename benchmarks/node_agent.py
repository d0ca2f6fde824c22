"""Node agent: time from an engine's SIGKILL to the node serving again, and the agent at idle.

A master and a prefill node (simulated engine, no agent) serve with one decode node whose
engine runs under a node agent (``startsecs`` 0.3 s; the default health probe every 2 s). The first
exit after a stable run restarts at once, later ones in a row back off (1 s, doubling); a
run of 2 s RUNNING resets the streak, and trials are that far apart. Each trial
SIGKILLs the engine and times until a request through the master succeeds again (the agent
notices the exit, restarts the engine, it reconnects, the master pairs it). Then the agent
sits idle with its engine RUNNING: its RSS, and its CPU over the idle window (probes,
lease renewals and supervision ticks included; the engine's own CPU is not counted).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from benchmarks.common import QUIET, parser, print_table, workdir, write_json
from pdlocal.cluster import (
    Cluster,
    cpu_seconds,
    free_port,
    rss_bytes,
    until_serving,
    wait_until,
)
from pdlocal.registry import start_config_server

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMING = ["--prefill_base_ms", "2", "--decode_base_ms", "5"]


def agent_toml(path: Path, master: str, config_server: str) -> tuple[Path, int, str]:
    host, port, api_port = "127.0.0.71", free_port("127.0.0.71"), free_port()
    extra = ", ".join(
        f'"{a}"'
        for a in [*QUIET, *TIMING, "--pd_reconnect_s", "0.2", "--pd_decode_rpyc_port",
                  str(free_port(host))]
    )  # fmt: skip
    path.write_text(
        f"""role = "decode"
engine = "sim"
host = "{host}"
port = {port}
nccl_port = {free_port(host)}
tp = 1
dp = 1
pd_master = "{master}"
config_server = "{config_server}"
python = "{sys.executable}"
extra_args = [{extra}]

[restart]
startsecs = 0.3
backoff_s = 1.0
backoff_reset_s = 2.0

[api]
host = "127.0.0.1"
port = {api_port}

[logs]
dir = "{path.parent / "agent-logs"}"
"""
    )
    return path, api_port, f"{host}:{port}"


def engine_pid(api: str) -> int | None:
    status = httpx.get(f"{api}/status", timeout=5).json()
    return status["engine"]["pid"] if status["state"] == "RUNNING" else None


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    trials, idle_s = (2, 3.0) if args.smoke else (5, 20.0)
    group = workdir()
    try:
        server = start_config_server(group, *QUIET)
        c = Cluster(group)
        c.start_master(*QUIET, "--kv_move_timeout", "2", "--first_token_timeout", "3")
        c.add_node("prefill", 0, *QUIET, timing=TIMING)
        toml, api_port, _ = agent_toml(
            group.workdir / "agent.toml", f"127.0.0.1:{c.master_port}", server.address
        )
        env = {"PYTHONPATH": str(REPO_ROOT)}
        agent = group.python("agent", "-m", "node_agents", "--config", str(toml), env=env)
        api = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: _quiet(engine_pid, api) is not None, 30, "the engine to run")
        c.wait_ready(1, 1)
        rows, results = [], []
        for trial in range(trials):
            pid = engine_pid(api)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            seconds = asyncio.run(until_serving(c.url, time.monotonic(), 30, poll_s=0.01))
            rows.append([f"kill #{trial + 1}", seconds])
            results.append({"trial": trial + 1, "kill_to_serving_s": seconds})
            wait_until(lambda: _quiet(engine_pid, api) is not None, 30, "RUNNING again")
            time.sleep(2.2)  # a stable run: the next kill is a first exit again
        assert agent.popen is not None
        apid = agent.popen.pid
        time.sleep(1.0)
        before, t0 = cpu_seconds(apid), time.monotonic()
        time.sleep(idle_s)
        cpu_pct = 100 * (cpu_seconds(apid) - before) / (time.monotonic() - t0)
        rss_mib = rss_bytes(apid) / 2**20
        kills = [r["kill_to_serving_s"] for r in results]
        print_table(
            "node agent: engine SIGKILL -> a request through the master succeeds",
            ["trial", "seconds"],
            rows,
        )
        print_table(
            f"node agent at idle ({idle_s:.0f} s, engine RUNNING)",
            ["agent RSS MiB", "agent CPU %", "kill->serving min s", "max s"],
            [[rss_mib, cpu_pct, min(kills), max(kills)]],
        )
        name = "node_agent_smoke" if args.smoke else "node_agent"
        write_json(
            name,
            {
                "results": results,
                "idle": {"seconds": idle_s, "agent_rss_mib": rss_mib, "agent_cpu_pct": cpu_pct},
                "errors": 0,
            },
        )
    finally:
        group.stop_all()


def _quiet(fn: Callable[..., T], *args: Any) -> T | None:
    try:
        return fn(*args)
    except httpx.HTTPError:
        return None


if __name__ == "__main__":
    main()
