"""The cluster under attack: a config server, a master under ``ulimit -n 1024`` registered with
it, one prefill and one decode simulated node; what an attack returns; whether all still serve."""

from __future__ import annotations

import asyncio
import base64
import shlex
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.common import QUIET
from pdlocal.cluster import (
    FAST_TIMING,
    Cluster,
    Proc,
    ProcGroup,
    free_port,
    http_ok,
    start_sim_node,
    wait_until,
)
from pdlocal.registry import ConfigServer, start_config_server
from pdwire.lightllm import LightLLMCodec

FD_LIMIT = 1024
REGISTER_TOKEN = "hostile-test-register-token"  # every agent and master holds it
MASTER_ARGS = [
    *QUIET,
    "--token_load_poll",
    "0.2",
    "--load_max_age",
    "2",
    "--kv_move_timeout",
    "2",
    "--first_token_timeout",
    "5",
    "--max_attempts",
    "1",
]


@dataclass
class Outcome:
    attack: str
    attempts: int
    refused: int
    serving: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> list[object]:
        return [self.attack, self.attempts, self.refused, "yes" if self.serving else "NO"]


@dataclass
class Target:
    """A master (``cluster.url``) with one prefill and one decode node, all serving."""

    cluster: Cluster
    procs: ProcGroup
    config_server: ConfigServer

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def master_address(self) -> str:
        return f"127.0.0.1:{self.cluster.master_port}"

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def master_pid(self) -> int:
        assert self.cluster.master is not None and self.cluster.master.popen is not None
        return self.cluster.master.popen.pid

    def master_log(self) -> str:
        assert self.cluster.master is not None
        return self.cluster.master.log()

    async def node_ids(self) -> dict[str, int]:
        """Node ids by role, as anyone can read them (``GET /token_load``)."""
        async with httpx.AsyncClient(timeout=5) as client:
            nodes = (await client.get(f"{self.url}/token_load")).json()["nodes"]
        return {n["role"]: int(node_id) for node_id, n in nodes.items()}


Attack = Callable[[Target], Awaitable[Outcome]]


def start_target(procs: ProcGroup) -> Target:
    env = {"PDCTL_REGISTER_TOKEN": REGISTER_TOKEN}
    registry = start_config_server(procs, *QUIET, env=env)
    c = Cluster(procs)
    c.master_port = free_port()
    c.master = start_limited_master(
        procs,
        c.master_port,
        *MASTER_ARGS,
        "--config_server_host",
        "127.0.0.1",
        "--config_server_port",
        str(registry.port),
        env=env,
    )
    discovery = ["--config_server_host", "127.0.0.1", "--config_server_port", str(registry.port)]
    for mode, host in (("prefill", "127.0.0.10"), ("decode", "127.0.0.60")):
        c.nodes.append(start_sim_node(procs, mode, 0, host, *QUIET, *FAST_TIMING, *discovery))
    c.wait_ready(1, 1)
    target = Target(c, procs, registry)
    wait_until(lambda: listed_address(target) == target.master_address, 10, "the master's record")
    return target


def start_limited_master(procs: ProcGroup, port: int, *args: str, env: dict[str, str]) -> Proc:
    """A master under ``ulimit -n FD_LIMIT``, as the issue's slowloris finding had it."""
    argv = [sys.executable, "-m", "pdmaster", "--host", "127.0.0.1", "--port", str(port), *args]
    command = f"ulimit -n {FD_LIMIT} && exec {shlex.join(argv)}"
    proc = Proc("master", ["bash", "-c", command], procs.workdir / "master.log").start(env)
    procs.procs.append(proc)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 20, "the master")
    return proc


def listed_masters(server: ConfigServer) -> dict[int, str]:
    """What LightLLM nodes read: ``/registered_objects``, master id -> address."""
    answer = httpx.get(f"{server.url}/registered_objects", timeout=5).json()
    objs = LightLLMCodec().decode_registered_objects(base64.b64decode(answer["data"]))
    return {node_id: obj.host_ip_port for node_id, obj in objs.items()}


def listed_address(target: Target) -> str | None:
    masters = listed_masters(target.config_server)
    return next(iter(masters.values()), None) if len(masters) == 1 else None


async def generate(url: str, max_new_tokens: int = 4, timeout: float = 10) -> httpx.Response:
    params = {"max_new_tokens": max_new_tokens, "ignore_eos": True}
    body = {"inputs": "What is AI?", "parameters": params}
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"{url}/generate", json=body)


async def still_serving(target: Target) -> bool:
    """Every process answers: the master's /health within 1 s, a /generate through P and D,
    and the config server lists the master at its own address."""
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            health = await client.get(f"{target.url}/health")
        reply = await generate(target.url)
        listed = await asyncio.to_thread(listed_address, target)
    except httpx.HTTPError:
        return False
    ok = health.status_code == 200 and reply.status_code == 200
    return ok and listed == target.master_address
