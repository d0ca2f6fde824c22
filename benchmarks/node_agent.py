"""Node agent: time from an engine's SIGKILL to the node serving again, the agent at idle,
and a multi-node instance: time from one rank's SIGKILL to the whole group serving again.

A master and a prefill node (simulated engine, no agent) serve with one decode node whose
engine runs under a node agent (``startsecs`` 0.3 s; the default health probe every 2 s). The first
exit after a stable run restarts at once, later ones in a row back off (1 s, doubling); a
run of 2 s RUNNING resets the streak, and trials are that far apart. Each trial
SIGKILLs the engine and times until a request through the master succeeds again (the agent
notices the exit, restarts the engine, it reconnects, the master pairs it). Then the agent
sits idle with its engine RUNNING: its RSS, and its CPU over the idle window (probes,
lease renewals and supervision ticks included; the engine's own CPU is not counted).

Then that agent stops and a 2-rank decode instance takes its place (two agents, one
simulated rank each, group poll 0.2 s, ``stopwaitsecs`` 1 s). Each trial SIGKILLs one rank's
engine (alternating ranks); the other rank hangs (its peer is gone, as over NCCL), its agent
restarts it when the group's generation moves on, the ranks meet again and register. Timed:
until a request through the master succeeds, and until the config server lists the group
RUNNING at its new generation.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from benchmarks.common import QUIET, parser, print_table, workdir, write_json
from pdcluster.formats import dump_toml
from pdlocal.cluster import (
    Cluster,
    ProcGroup,
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


def decode_agent(
    host: str, port: int, nccl_port: int, api_port: int, master: str, config_server: str
) -> dict[str, Any]:
    """A simulated decode node's agent config, restarting fast; callers add what differs."""
    extra = [*QUIET, *TIMING, "--pd_reconnect_s", "0.2"]
    return {
        "role": "decode",
        "engine": "sim",
        "host": host,
        "port": port,
        "nccl_port": nccl_port,
        "tp": 1,
        "dp": 1,
        "pd_master": master,
        "config_server": config_server,
        "python": sys.executable,
        "extra_args": [*extra, "--pd_decode_rpyc_port", str(free_port(host))],
        "restart": {"startsecs": 0.3, "backoff_s": 1.0, "backoff_reset_s": 2.0},
        "api": {"host": "127.0.0.1", "port": api_port},
    }


def agent_toml(path: Path, master: str, config_server: str) -> tuple[Path, int, str]:
    host, port, api_port = "127.0.0.71", free_port("127.0.0.71"), free_port()
    config = decode_agent(host, port, free_port(host), api_port, master, config_server)
    config["logs"] = {"dir": str(path.parent / "agent-logs")}
    path.write_text(dump_toml(config))
    return path, api_port, f"{host}:{port}"


def rank_toml(
    path: Path, rank: int, hosts: tuple[str, str], nccl_port: int, master: str, config_server: str
) -> tuple[Path, int]:
    host, api_port = hosts[rank], free_port()
    config = decode_agent(host, free_port(host), nccl_port, api_port, master, config_server)
    config.update(tp=2, dp=2, nnodes=2, node_rank=rank, nccl_host=hosts[0])
    config["restart"]["stopwaitsecs"] = 1.0
    config["group"] = {"id": "bench-decode", "poll_s": 0.2}
    config["registration"] = {"node_id": f"bench-rank{rank}"}
    config["logs"] = {"dir": str(path.parent / f"rank{rank}-logs")}
    path.write_text(dump_toml(config))
    return path, api_port


def group_trials(
    c: Cluster, group: ProcGroup, config_server: str, trials: int
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    hosts = ("127.0.0.72", "127.0.0.73")
    nccl_port = free_port(hosts[0])
    env = {"PYTHONPATH": str(REPO_ROOT)}
    apis = []
    for rank in (0, 1):
        toml, api_port = rank_toml(
            group.workdir / f"rank{rank}.toml", rank, hosts, nccl_port,
            f"127.0.0.1:{c.master_port}", config_server,
        )  # fmt: skip
        group.python(f"rank{rank}", "-m", "node_agents", "--config", str(toml), env=env)
        apis.append(f"http://127.0.0.1:{api_port}")
    for api in apis:
        wait_until(functools.partial(_running, api), 30, "a rank to run")
    c.wait_ready(1, 2)
    url = f"http://{config_server}/v1/groups/bench-decode"
    rows, results = [], []
    for trial in range(trials):
        rank = trial % 2
        pid = engine_pid(apis[rank])
        assert pid is not None
        generation = httpx.get(url, timeout=5).json()["generation"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        serving = asyncio.run(until_serving(c.url, killed, 30, poll_s=0.01))

        def group_running(before: int = generation) -> bool:
            record = httpx.get(url, timeout=5).json()
            return bool(record["state"] == "RUNNING" and record["generation"] > before)

        wait_until(group_running, 30, "the group RUNNING at its next generation")
        running = time.monotonic() - killed
        rows.append([f"kill rank {rank} #{trial + 1}", serving, running])
        results.append(
            {"trial": trial + 1, "rank": rank, "kill_to_serving_s": serving,
             "kill_to_group_running_s": running}
        )  # fmt: skip
        if trial + 1 < trials:
            time.sleep(2.2)  # a stable run: the next kill is a first exit again
    return rows, results


def engine_pid(api: str) -> int | None:
    status = httpx.get(f"{api}/status", timeout=5).json()
    return status["engine"]["pid"] if status["state"] == "RUNNING" else None


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    trials, idle_s = (1, 1.0) if args.smoke else (5, 20.0)
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
            if trial + 1 < trials:
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
        agent.stop()
        group_rows, group_results = group_trials(c, group, server.address, trials)
        print_table(
            "2-rank instance: one rank's engine SIGKILL -> every rank restarted and serving",
            ["trial", "request ok s", "group RUNNING s"],
            group_rows,
        )
        name = "node_agent_smoke" if args.smoke else "node_agent"
        write_json(
            name,
            {
                "results": results,
                "idle": {"seconds": idle_s, "agent_rss_mib": rss_mib, "agent_cpu_pct": cpu_pct},
                "group": group_results,
                "errors": 0,
            },
        )
    finally:
        group.stop_all()


def _running(api: str) -> bool:
    return _quiet(engine_pid, api) is not None


def _quiet(fn: Callable[..., T], *args: Any) -> T | None:
    try:
        return fn(*args)
    except httpx.HTTPError:
        return None


if __name__ == "__main__":
    main()
