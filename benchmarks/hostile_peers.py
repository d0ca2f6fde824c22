"""Hostile peers: each attack of issue 13 against real processes on loopback, as a table.

``python -m benchmarks.hostile_peers [--smoke]`` starts a config server and a master
registered with it (under ``ulimit -n 1024``), one prefill and one decode simulated node
(and whatever an attack needs besides), runs every attack in ``ATTACKS`` and prints, per
attack: attempts, how many were refused, and whether every process still serves (a
``/generate`` answers 200, ``/health`` within 1 s, the config server lists the master at
its own address). Results go to ``benchmarks/results/hostile_peers.json``.
``tests/integration/test_hostile.py`` runs the same attacks and asserts on their outcomes.

An attack is ``async def attack(target: Target) -> Outcome``; append it to ``ATTACKS``.
Attackers connect from 127.0.0.2 (a different address than every node's), as a host on
the cluster network would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from benchmarks.common import QUIET, parser, print_table, workdir, write_json
from pdlocal.cluster import (
    FAST_TIMING,
    Cluster,
    Proc,
    ProcGroup,
    free_port,
    http_ok,
    rss_bytes,
    start_master_proc,
    start_sim_node,
    wait_until,
)
from pdlocal.registry import ConfigServer, start_config_server
from pdmaster.settings import PROMPT_BYTES_PER_TOKEN
from pdwire.lightllm import LightLLMCodec, PD_Master_Obj
from pdwire.structs import FinishStatus

ATTACKER = "127.0.0.2"
REFUSED_CODES = (1008, 1009)
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


def attacker_socket(url: str) -> Any:
    return connect(url, local_addr=(ATTACKER, 0), max_size=None, open_timeout=5)


async def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    """The code the server closed ``ws`` with (None: still open after ``timeout``)."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except TimeoutError:
        return None
    except ConnectionClosed:
        pass
    return ws.close_code


def registration(node_id: int, mode: str, port: int = 1) -> dict[str, Any]:
    args: dict[str, Any] = {"host": ATTACKER, "pd_node_id": node_id}
    if mode == "decode":
        args["pd_decode_rpyc_port"] = 1234
    return {
        "node_id": node_id,
        "client_ip_port": f"{ATTACKER}:{port}",
        "mode": mode,
        "start_args": args,
    }


async def frame_refused(url: str, text: str) -> bool:
    """Send one text frame; True if the server closes the socket with 1008/1009."""
    async with attacker_socket(url) as ws:
        await ws.send(text)
        return await close_code(ws) in REFUSED_CODES


HUGE_INT = "9" * 5000
JSON_BOMBS = {
    "nested 5000 deep": "[" * 5000 + "]" * 5000,
    "5000-digit integer": '{"node_id": ' + HUGE_INT + "}",
    "NaN": '{"node_id": NaN}',
    "1e999": '{"node_id": 1e999}',
    "300 KB": json.dumps({"node_id": 1, "pad": "x" * 300_000}),
}


async def registration_json_bombs(target: Target) -> Outcome:
    refused = [await frame_refused(f"{target.ws}/pd_register", t) for t in JSON_BOMBS.values()]
    return Outcome("/pd_register: deep, huge-int, NaN, 300 KB JSON", len(refused), sum(refused))


async def kv_status_json_bombs(target: Target) -> Outcome:
    bombs = {
        **JSON_BOMBS,
        "5000-digit group id": '{"type": "kv_move_status", "group_request_id": '
        + HUGE_INT
        + ', "dp_index": 0, "pd_master_node_id": 0}',
    }
    refused = [await frame_refused(f"{target.ws}/kv_move_status", t) for t in bombs.values()]
    return Outcome("/kv_move_status: deep, huge-int, NaN, 300 KB JSON", len(refused), sum(refused))


async def node_id_takeover(target: Target) -> Outcome:
    """Register with the live decode node's id (public) from another address, mid-stream."""
    ids = await target.node_ids()
    stream = asyncio.create_task(generate(target.url, max_new_tokens=200))
    await asyncio.sleep(0.3)
    refused = []
    for mode in ("decode", "prefill"):
        refused.append(
            await frame_refused(
                f"{target.ws}/pd_register", json.dumps(registration(ids[mode], mode))
            )
        )
    reply = await stream
    ok = reply.status_code == 200 and reply.json()["count_output_tokens"] == 200
    return Outcome(
        "/pd_register with a live node's id",
        len(refused),
        sum(refused),
        details={"stream": ok, "stream_status": reply.status_code, "body": reply.text[:200]},
    )


async def forged_kv_status(target: Target) -> Outcome:
    """While a request waits for its KV hand-off (the decode node never confirms it),
    send a kv_move_status for every group id it may have from another address."""
    decode = target.cluster.node("decode")
    async with httpx.AsyncClient(timeout=5) as client:
        await client.put(f"{decode.url}/sim/faults", json={"drop_kv_rate": 1.0})
    try:
        request = asyncio.create_task(generate(target.url, max_new_tokens=8))
        await asyncio.sleep(0.3)
        sent = 0
        async with attacker_socket(f"{target.ws}/kv_move_status") as ws:
            for group in range(8, 8 * 5000, 8):
                status = {"type": "kv_move_status", "group_request_id": group, "dp_index": 0}
                await ws.send(json.dumps({**status, "pd_master_node_id": 0}))
                sent += 1
        reply = await request
    finally:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.put(f"{decode.url}/sim/faults", json={"drop_kv_rate": 0.0})
    released = reply.status_code == 200
    return Outcome(
        "forged kv_move_status for every group id",
        sent,
        0 if released else sent,
        details={"request_status": reply.status_code},
    )


def poisoned_load_frames(codec: LightLLMCodec, rates: list[object]) -> list[bytes]:
    entry = (0, "", {"id": 0}, FinishStatus())
    return [codec.encode_token_packs([entry], {"total_token_usage_rate": r}) for r in rates]


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{url}/metrics")).text
    values = [float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name)]
    return sum(values)


async def poisoned_load_report(target: Target) -> Outcome:
    """A node (drained, so it takes no requests) reports huge, infinite, NaN usage."""
    node_id = 0xBAD
    codec = LightLLMCodec()
    frames = poisoned_load_frames(codec, [float("inf"), float("nan"), -1.0, 1e300, "0.5"])
    # a 1329-bit integer is past the decoder's integer cap: the frame itself is refused
    async with attacker_socket(f"{target.ws}/pd_register") as ws:
        await ws.send(json.dumps(registration(node_id + 1, "prefill")))
        await ws.send(poisoned_load_frames(codec, [10**400])[0])
        huge_refused = await close_code(ws) in REFUSED_CODES
    before = await metric(target.url, "pd_node_load_reports_ignored_total")
    async with attacker_socket(f"{target.ws}/pd_register") as ws:
        await ws.send(json.dumps(registration(node_id, "prefill")))
        async with httpx.AsyncClient(timeout=5) as client:
            await asyncio.sleep(0.3)
            await client.post(f"{target.url}/v1/nodes/{node_id}/drain")
            for frame in frames:
                await ws.send(frame)
            await asyncio.sleep(0.3)
            pages = [await client.get(f"{target.url}{p}") for p in ("/token_load", "/v1/nodes")]
            replies = [await generate(target.url) for _ in range(5)]
    ignored = await metric(target.url, "pd_node_load_reports_ignored_total") - before
    ok = all(r.status_code == 200 for r in pages + replies)
    return Outcome(
        "poisoned usage rate (10**400, inf, NaN, -1, 1e300, str)",
        len(frames) + 1,
        int(ignored) + huge_refused,
        details={"pages_and_requests_ok": ok},
    )


class HostileLoadServer:
    """An HTTP server on the attacker's address whose body never ends (or drips)."""

    def __init__(self, drip_s: float | None) -> None:
        self.drip_s = drip_s
        self.polls = 0
        self.cut = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.polls += 1
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"1\r\n \r\n" if self.drip_s else b"10000\r\n" + b" " * 65536 + b"\r\n"
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(self.drip_s or 0)
        except (ConnectionError, OSError):
            self.cut += 1
        except asyncio.CancelledError:
            pass  # still open when the attack ended
        finally:
            writer.close()


async def hostile_token_load(target: Target, drip_s: float | None) -> tuple[int, int, bool, int]:
    server = HostileLoadServer(drip_s)
    listener = await asyncio.start_server(server.handle, ATTACKER, 0)
    port = listener.sockets[0].getsockname()[1]
    rss_before = rss_bytes(target.master_pid)
    try:
        async with attacker_socket(f"{target.ws}/pd_register") as ws:
            await ws.send(json.dumps(registration(0xBAD0 + (drip_s is None), "prefill", port)))
            async with httpx.AsyncClient(timeout=5) as client:
                await asyncio.sleep(0.2)
                await client.post(f"{target.url}/v1/nodes/{0xBAD0 + (drip_s is None)}/drain")
                await asyncio.sleep(3.0)  # > --load_max_age: the real nodes' load must stay fresh
                nodes = (await client.get(f"{target.url}/token_load")).json()["nodes"]
        await asyncio.sleep(1.5)  # the node left: its last poll's cut shows at the next write
    finally:
        listener.close()
    fresh = all(
        n["reported_usage"] is not None for i, n in nodes.items() if int(i) not in (0xBAD0, 0xBAD1)
    )
    return server.polls, server.cut, fresh, rss_bytes(target.master_pid) - rss_before


async def endless_token_load(target: Target) -> Outcome:
    polls, cut, fresh, grew = await hostile_token_load(target, None)
    return Outcome(
        "/token_load answer that never ends",
        polls,
        cut,
        details={"other_nodes_load_fresh": fresh, "master_rss_growth_mb": grew / 2**20},
    )


async def dripping_token_load(target: Target) -> Outcome:
    polls, cut, fresh, grew = await hostile_token_load(target, 0.5)
    return Outcome(
        "/token_load answer dripped 1 byte / 0.5 s",
        polls,
        cut,
        details={"other_nodes_load_fresh": fresh, "master_rss_growth_mb": grew / 2**20},
    )


async def outside_allow_cidr(target: Target) -> Outcome:
    """A master with --allow-cidr refuses node sockets from other networks at the handshake."""
    port = free_port()
    proc = start_master_proc(
        target.procs, "cidr-master", port, *QUIET, "--allow-cidr", "127.0.0.1/32"
    )
    refused = []
    try:
        for path in ("/pd_register", "/kv_move_status"):
            try:
                async with attacker_socket(f"ws://127.0.0.1:{port}{path}") as ws:
                    await ws.send(json.dumps(registration(7, "prefill")))
                    refused.append(await close_code(ws) in REFUSED_CODES)
            except InvalidStatus as exc:
                refused.append(exc.response.status_code == 403)
    finally:
        proc.stop()
    return Outcome("node sockets from outside --allow-cidr", len(refused), sum(refused))


def _str(value: str) -> bytes:
    raw = value.encode()
    return b"\x8c" + bytes((len(raw),)) + raw


def _global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x04\x95" + (len(body) + 1).to_bytes(8, "little") + body + b"."


def _setattrs(**attrs: bytes) -> bytes:
    """BUILD with ``(None, {name: value})``: setattr on the object under it."""
    return b"N}(" + b"".join(_str(k) + v for k, v in attrs.items()) + b"u\x86b"


PD_IO = "lightllm.server.pd_io_struct"
OS_SYSTEM = _str("os") + _str("system") + b"\x86"
PICKLE_BOMBS = {
    # accepted, these would make the master's frames run a command on every LightLLM node
    "ObjType pickled as os.system": _global(PD_IO, "ObjType")
    + _setattrs(__lightllm_name__=OS_SYSTEM),
    "ABORT's value a command": _global(PD_IO, "ObjType")
    + b"K\x01\x85R"
    + _setattrs(_value_=_str("touch /tmp/pdctl-pwned")),
    "ObjType's value map emptied": _global(PD_IO, "ObjType") + _setattrs(_value2member_map_=b"}"),
    "PD_Master_Obj pickled as os.system": _global(PD_IO, "PD_Master_Obj")
    + _setattrs(__lightllm_name__=OS_SYSTEM),
    # a dict keyed by a tuple 40 deep, two references per level: 2**40 hashes
    "hash bomb": b"})\x94"
    + b"".join(b"h" + bytes((i,)) + b"h" + bytes((i,)) + b"\x86\x94" for i in range(40))
    + b"Ns",
}


async def pickled_frame_bombs(target: Target) -> Outcome:
    """Binary frames after a registration: BUILD on wire classes, a hash bomb, a memo bomb
    (LONG_BINPUT at 2**27), a 17 MiB frame; /health must answer within 1 s throughout."""
    frames = [_pickle(body) for body in PICKLE_BOMBS.values()]
    frames += [b"\x80\x04Nr\x00\x00\x00\x08.", b"\x80" * (17 * 1024 * 1024)]
    rss_before = rss_bytes(target.master_pid)
    refused, slowest = [], 0.0
    async with httpx.AsyncClient(timeout=5) as client:
        for port, frame in enumerate(frames, start=9000):
            async with attacker_socket(f"{target.ws}/pd_register") as ws:
                await ws.send(json.dumps(registration(port, "prefill", port)))
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    pass
                start = time.monotonic()
                await client.get(f"{target.url}/health")
                slowest = max(slowest, time.monotonic() - start)
                refused.append(await close_code(ws) in REFUSED_CODES)
    return Outcome(
        "/pd_register: pickled BUILD, hash, memo bombs; 17 MiB frame",
        len(refused),
        sum(refused) if slowest < 1.0 and not os.path.exists("/tmp/pdctl-pwned") else 0,
        details={
            "slowest_health_s": round(slowest, 3),
            "rss_growth_mb": round((rss_bytes(target.master_pid) - rss_before) / 2**20, 1),
        },
    )


async def master_id_on_websocket(target: Target) -> Outcome:
    """Register a second LightLLM master with the live one's id (public) at another address."""
    cfg = target.config_server
    master_id = next(iter(await asyncio.to_thread(listed_masters, cfg)))
    frame = LightLLMCodec().encode_pd_master_obj(PD_Master_Obj(master_id, f"{ATTACKER}:9"))
    refused = []
    for _ in range(3):
        async with attacker_socket(f"ws://{cfg.address}/pd_master_register") as ws:
            await ws.send(frame)
            refused.append(await close_code(ws, timeout=2) in REFUSED_CODES)
    return Outcome("/pd_master_register with a live master's id", len(refused), sum(refused))


async def master_id_on_v1(target: Target) -> Outcome:
    """PUT and DELETE /v1/masters/<live id> with the register token every agent holds."""
    cfg = target.config_server
    master_id = next(iter(await asyncio.to_thread(listed_masters, cfg)))
    url = f"{cfg.url}/v1/masters/{master_id}"
    headers = {"Authorization": f"Bearer {REGISTER_TOKEN}"}
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
    async with httpx.AsyncClient(timeout=5, headers=headers, transport=transport) as client:
        replies = [
            await client.put(url, json={"address": f"{ATTACKER}:9", "ttl_s": 60}),
            await client.delete(url),
        ]
    statuses = [r.status_code for r in replies]
    return Outcome(
        "PUT/DELETE /v1/masters/<live id> with the register token",
        len(replies),
        statuses.count(409),
        details={"statuses": statuses},
    )


async def id_range_flood(target: Target) -> Outcome:
    """A config server with --allow-cidr: id ranges only for its networks or the token."""
    env = {"PDCTL_REGISTER_TOKEN": REGISTER_TOKEN}
    cfg = start_config_server(
        target.procs, *QUIET, "--allow-cidr", "127.0.0.1/32", name="cidr-config", env=env
    )
    url = f"{cfg.url}/allocate_global_unique_id_range"
    try:
        transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
        async with httpx.AsyncClient(timeout=5, transport=transport) as client:
            statuses = [(await client.get(url)).status_code for _ in range(200)]
            bearer = {"Authorization": f"Bearer {REGISTER_TOKEN}"}
            with_token = (await client.get(url, headers=bearer)).status_code
        async with httpx.AsyncClient(timeout=5) as client:
            from_allowed = (await client.get(url)).status_code
    finally:
        cfg.proc.stop()
    return Outcome(
        "/allocate_global_unique_id_range from outside --allow-cidr",
        len(statuses),
        statuses.count(403),
        details={"with_register_token": with_token, "from_allowed_network": from_allowed},
    )


async def id_range_wait(target: Target) -> Outcome:
    """A master whose config server stops answering id ranges: its first request must end
    at the request's deadline (3 s), not after the config server's retries."""
    cfg = start_config_server(target.procs, *QUIET, name="stalled-config")
    port = free_port()
    master = start_master_proc(
        target.procs,
        "stalled-master",
        port,
        *QUIET,
        "--config_server_host",
        "127.0.0.1",
        "--config_server_port",
        str(cfg.port),
        "--request_timeout",
        "3",
    )
    assert cfg.proc.popen is not None
    url = f"ws://127.0.0.1:{port}/pd_register"
    try:
        async with attacker_socket(url) as p, attacker_socket(url) as d:
            await p.send(json.dumps(registration(1, "prefill")))
            await d.send(json.dumps(registration(2, "decode")))
            await asyncio.sleep(0.3)
            os.kill(cfg.proc.popen.pid, signal.SIGSTOP)
            started = time.monotonic()
            reply = await generate(f"http://127.0.0.1:{port}", timeout=30)
            took = time.monotonic() - started
    finally:
        os.kill(cfg.proc.popen.pid, signal.SIGCONT)
        master.stop()
        cfg.proc.stop()
    in_time = reply.status_code == 504 and took < 4.0
    return Outcome(
        "id-range wait on a stalled config server",
        1,
        int(in_time),
        details={"status": reply.status_code, "seconds": round(took, 2)},
    )


async def slowloris(target: Target, seconds: float = 3.0, holders: int = 1100) -> Outcome:
    """1,100 half-sent requests held open (reopened when closed) against the master under
    ``ulimit -n 1024``, while normal requests go on."""
    opened = closed = 0
    stop = asyncio.Event()
    host, port = "127.0.0.1", target.cluster.master_port

    async def hold() -> None:
        nonlocal opened, closed
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            opened += 1
            writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
            try:
                while not stop.is_set():
                    writer.write(b"X-a: b\r\n")
                    await writer.drain()
                    read = asyncio.ensure_future(reader.read(1))
                    done, _ = await asyncio.wait([read], timeout=0.5)
                    if not done:
                        read.cancel()
                        continue
                    if read.result() == b"":
                        closed += 1
                        break
            except (ConnectionError, OSError):
                closed += 1
            finally:
                writer.close()
            await asyncio.sleep(0.1)

    def normal() -> tuple[int, int, float]:
        """Normal requests, one at a time, each on a new connection (from another thread:
        the attacker's own loop is busy)."""
        ok = sent = 0
        slowest = 0.0
        body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 4}}
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            sent += 1
            started = time.monotonic()
            try:
                reply = httpx.post(f"{target.url}/generate", json=body, timeout=5)
                ok += reply.status_code == 200
            except httpx.HTTPError:
                pass
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        return ok, sent, slowest

    tasks = [asyncio.create_task(hold()) for _ in range(holders)]
    await asyncio.sleep(1.0)  # the holders are in place
    ok, sent, slowest = await asyncio.to_thread(normal)
    stop.set()
    await asyncio.gather(*tasks)
    return Outcome(
        "slowloris: 1,100 half-sent requests, ulimit -n 1024",
        opened,
        closed,
        details={"normal_requests": sent, "normal_ok": ok, "slowest_s": round(slowest, 2)},
    )


async def bad_path_parameters(target: Target) -> Outcome:
    """Unicode digits and 5000-digit ids in path parameters: a 4xx each, never a 500."""
    ids = ["\u00b2", "9" * 5000, "-1", "1e3"]
    cfg = target.config_server.url
    urls = [f"{target.url}/v1/nodes/{i}/drain" for i in ids]
    urls += [f"{cfg}/v1/masters/{i}" for i in ids]
    async with httpx.AsyncClient(timeout=5) as client:
        statuses = [(await client.post(u)).status_code for u in urls[: len(ids)]]
        statuses += [(await client.get(u)).status_code for u in urls[len(ids) :]]
    return Outcome(
        "path parameters: '\u00b2', 5000 digits, -1, 1e3",
        len(statuses),
        sum(400 <= s < 500 for s in statuses),
        details={"statuses": statuses},
    )


async def heavy_prompts(target: Target, seconds: float = 2.0) -> Outcome:
    """3.9 MB prompts (over the byte limit: refused before tokenizing) and 190 KB ones
    (tokenized, ~0.4 s each, then refused as too many tokens) from 4 clients, while
    another client times /health."""
    bodies = [encoded({"inputs": _text(n)}) for n in (3_900_000, 190_000)]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def attacker(body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                reply = await client.post(f"{target.url}/generate", content=body, headers=headers)
                statuses.append(reply.status_code)

    attackers = [asyncio.create_task(attacker(bodies[i % 2])) for i in range(4)]
    slowest = await asyncio.to_thread(health_latency, target.url, seconds)
    stop.set()
    await asyncio.gather(*attackers)
    return Outcome(
        "3.9 MB and 190 KB prompts from 4 clients",
        len(statuses),
        sum(s in (400, 413) for s in statuses),
        details={"statuses": sorted(set(statuses)), "health_slowest_s": round(slowest, 3)},
    )


@dataclass(frozen=True)
class PromptApi:
    """A client API that carries a text prompt: the body for one, and the field its 413
    names (OpenAI's errors name it in ``param`` too, Anthropic's in the message only)."""

    path: str
    field: str
    body: Callable[[str, str], dict[str, Any]]  # (prompt, model) -> request body
    stream_ends: tuple[bytes, ...] = ()  # the events that end a completed stream
    limit_field: str = "max_tokens"  # the output limit's name


def _chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# Without an output limit where the API allows it: that path counts the prompt's tokens first.
COMPLETIONS = PromptApi(
    "/v1/completions",
    "prompt",
    lambda p, m: {"prompt": p, "max_tokens": 16},
    (b"data: [DONE]",),
)
CHAT = PromptApi(
    "/v1/chat/completions", "messages", lambda p, m: {"messages": _chat(p)}, (b"data: [DONE]",)
)
MESSAGES = PromptApi(
    "/v1/messages",
    "messages",
    lambda p, m: {"model": m, "max_tokens": 16, "messages": _chat(p)},
    (b"event: message_stop",),
)
RESPONSES = PromptApi(
    "/v1/responses",
    "input",
    lambda p, m: {"input": p},
    (b"event: response.completed", b"event: response.incomplete"),
    "max_output_tokens",
)
COUNT_TOKENS = PromptApi(
    "/v1/messages/count_tokens", "messages", lambda p, m: {"model": m, "messages": _chat(p)}
)
LIGHTLLM_TOKENS = PromptApi("/tokens", "text", lambda p, m: {"text": p})


def names_field(reply: httpx.Response, field: str) -> bool:
    """A 413 whose error names ``field``, in the API's own error shape."""
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    named = error["message"].startswith(f"{field}: ") and error.get("param", field) == field
    return reply.status_code == 413 and named


def normal_stream(url: str, api: PromptApi, model: str) -> tuple[bool, float]:
    """One short streamed answer (from a thread: the attackers' loop is busy uploading):
    whether it ended with the API's last event, and how long it took."""
    body = {**api.body("Tell me about the sea.", model), "stream": True}
    body.setdefault(api.limit_field, 32)
    started = time.monotonic()
    try:
        with httpx.stream("POST", f"{url}{api.path}", json=body, timeout=10) as reply:
            text = b"".join(reply.iter_bytes())
        ok = reply.status_code == 200 and any(end in text for end in api.stream_ends)
    except httpx.HTTPError:
        ok = False
    return ok, time.monotonic() - started


def api_prompts(
    label: str, apis: list[PromptApi], stream_api: PromptApi, seconds: float = 1.5
) -> Attack:
    """For each of ``apis``: a prompt over the byte limit and a 3.9 MB one (413 naming the
    field, before tokenizing), then 190 KB prompts from 2 clients in a loop (parsed,
    rendered and tokenized off the event loop), while another client times /health and a
    normal stream runs on ``stream_api``."""

    async def attack(target: Target) -> Outcome:
        url = target.url
        async with httpx.AsyncClient(timeout=30) as client:
            model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
            info = (await client.get(f"{url}/get_server_info")).json()
            limit = info["max_prompt_bytes"] or PROMPT_BYTES_PER_TOKEN * info["max_req_total_len"]
            oversized = []
            for api in apis:
                for size in (limit + 50_000, 3_900_000):
                    reply = await client.post(url + api.path, json=api.body(_text(size), model))
                    oversized.append(names_field(reply, api.field))
        loads = [encoded(api.body(_text(190_000), model)) for api in apis]
        statuses: list[int] = []
        stop = asyncio.Event()

        async def attacker(body: bytes, path: str) -> None:
            headers = {"Content-Type": "application/json"}
            async with httpx.AsyncClient(timeout=30) as client:
                while not stop.is_set():
                    reply = await client.post(url + path, content=body, headers=headers)
                    statuses.append(reply.status_code)

        async def stream_later() -> tuple[bool, float]:
            await asyncio.sleep(0.3)  # the attackers are uploading and tokenizing
            return await asyncio.to_thread(normal_stream, url, stream_api, model)

        attackers = [
            asyncio.create_task(attacker(loads[i % len(apis)], apis[i % len(apis)].path))
            for i in range(2)
        ]
        streamed = asyncio.create_task(stream_later())
        slowest = await asyncio.to_thread(health_latency, url, seconds)
        stop.set()
        await asyncio.gather(*attackers)
        stream_ok, stream_s = await streamed
        return Outcome(
            label,
            len(oversized) + len(statuses),
            sum(oversized) + sum(400 <= s < 500 for s in statuses),
            details={
                "oversized_named": sum(oversized),
                "oversized": len(oversized),
                "statuses": sorted(set(statuses)),
                "loop_requests": len(statuses),
                "health_slowest_s": round(slowest, 3),
                "stream_ok": stream_ok,
                "stream_s": round(stream_s, 2),
            },
        )

    attack.__name__ = f"api_prompts({label})"
    return attack


async def message_list_flood(target: Target, seconds: float = 1.5) -> Outcome:
    """Message lists of tens of thousands of tiny messages, each body just under 6x the
    prompt limit (the most a message list may be): parsed, validated and rendered off the
    event loop, then refused as a prompt over the limit; from 2 clients, on the OpenAI and
    Anthropic chat endpoints, while another client times /health."""
    async with httpx.AsyncClient(timeout=30) as client:
        info = (await client.get(f"{target.url}/get_server_info")).json()
        model = (await client.get(f"{target.url}/v1/models")).json()["data"][0]["id"]
    room = 6 * (info["max_prompt_bytes"] or PROMPT_BYTES_PER_TOKEN * info["max_req_total_len"])
    chat = {"role": "user", "content": "hi"}
    block = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    floods = [
        (path, encoded({"model": model, "max_tokens": 4, "messages": [m] * ((room - 200) // size)}))
        for path, m in (("/v1/chat/completions", chat), ("/v1/messages", block))
        for size in [len(json.dumps(m)) + 2]  # ", " between messages
    ]
    statuses: list[int] = []
    rendered = 0  # refused for the rendered prompt, not the body's size
    stop = asyncio.Event()

    async def attacker(path: str, body: bytes) -> None:
        nonlocal rendered
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                reply = await client.post(target.url + path, content=body, headers=headers)
                statuses.append(reply.status_code)
                rendered += b"the prompt is over" in reply.content

    attackers = [asyncio.create_task(attacker(*flood)) for flood in floods]
    slowest = await asyncio.to_thread(health_latency, target.url, seconds)
    stop.set()
    await asyncio.gather(*attackers)
    return Outcome(
        "message lists of ~1.1 MB (tens of thousands of messages) from 2 clients",
        len(statuses),
        sum(s == 413 for s in statuses),
        details={
            "statuses": sorted(set(statuses)),
            "rendered": rendered,
            "health_slowest_s": round(slowest, 3),
        },
    )


def _text(n: int) -> str:
    """``n`` characters of English-like text."""
    words = "the quick brown fox jumps over a lazy dog while transformers attend to tokens "
    return (words * (n // len(words) + 1))[:n]


def encoded(body: dict[str, Any]) -> bytes:
    """Encoded once: encoding per request would stall this process, not the master."""
    return json.dumps(body).encode()


def health_latency(url: str, seconds: float) -> float:
    """The slowest of /health answers over ``seconds`` (from a thread: this process's loop
    is busy with the uploads)."""
    slowest = 0.0
    ends = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < ends:
            started = time.monotonic()
            client.get(f"{url}/health")
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
    return slowest


PROMPT_API_ATTACKS = [
    api_prompts("OpenAI /v1/completions: oversized and 190 KB", [COMPLETIONS], COMPLETIONS),
    api_prompts("OpenAI /v1/chat/completions: oversized and 190 KB", [CHAT], CHAT),
    api_prompts("Anthropic /v1/messages: oversized and 190 KB", [MESSAGES], MESSAGES),
    api_prompts("OpenAI /v1/responses: oversized and 190 KB", [RESPONSES], RESPONSES),
    api_prompts(
        "token counters (/v1/messages/count_tokens, /tokens): oversized and 190 KB",
        [COUNT_TOKENS, LIGHTLLM_TOKENS],
        CHAT,
    ),
]


ATTACKS: list[Attack] = [
    pickled_frame_bombs,
    registration_json_bombs,
    kv_status_json_bombs,
    node_id_takeover,
    forged_kv_status,
    poisoned_load_report,
    endless_token_load,
    dripping_token_load,
    outside_allow_cidr,
    master_id_on_websocket,
    master_id_on_v1,
    id_range_flood,
    id_range_wait,
    slowloris,
    bad_path_parameters,
    heavy_prompts,
    *PROMPT_API_ATTACKS,
    message_list_flood,
]


async def run_attack(attack: Attack, target: Target) -> Outcome:
    outcome = await attack(target)
    outcome.serving = await still_serving(target)
    return outcome


def main() -> None:
    parser(__doc__ or "").parse_args()
    procs = workdir()
    outcomes = []
    try:
        target = start_target(procs)
        for attack in ATTACKS:
            started = time.monotonic()
            outcome = asyncio.run(run_attack(attack, target))
            outcome.details["seconds"] = round(time.monotonic() - started, 2)
            outcomes.append(outcome)
    finally:
        procs.stop_all()
    headers = ["attack", "attempts", "refused", "still serving"]
    print_table("Hostile peers (issue 13)", headers, [o.row for o in outcomes])
    write_json("hostile_peers", {"attacks": [asdict(o) for o in outcomes]})


if __name__ == "__main__":
    main()
