"""Issue 13's frames against real processes: a master's node sockets and a simulated node's
link to its master. No frame runs code, stalls the process or changes what it sends."""

from __future__ import annotations

import asyncio
import json
import pickletools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pdlocal.cluster import Cluster, ProcGroup, free_port, rss_bytes, start_sim_node, wait_until
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import ObjType
from tests.pdwire.test_hostile_frames import frame, g, hash_bomb, s, slotstate

PD_IO = "lightllm.server.pd_io_struct"
CODEC = LightLLMCodec("v1.1.0")
OVERSIZED = 17 * 1024 * 1024  # past the 16 MiB default


def rce_frames(marker: Path) -> dict[str, bytes]:
    """BUILD frames that, accepted, would make the master's own frames run ``touch marker``
    in every LightLLM node that unpickles them, or leave it unable to encode ObjType."""
    command = s(f"touch {marker}")
    return {
        "ObjType as os.system": g(PD_IO, "ObjType")
        + slotstate(__lightllm_name__=s("os") + s("system") + b"\x86"),
        "ABORT's value a command": g(PD_IO, "ObjType") + b"K\x01\x85R" + slotstate(_value_=command),
        "ObjType's value map emptied": g(PD_IO, "ObjType") + slotstate(_value2member_map_=b"}"),
        "PD_Master_Obj as os.system": g(PD_IO, "PD_Master_Obj")
        + slotstate(__lightllm_name__=s("os") + s("system") + b"\x86"),
    }


def registration(port: int, mode: str = "prefill") -> str:
    node_id = 900 + port % 100
    return json.dumps(
        {
            "node_id": node_id,
            "client_ip_port": f"127.0.0.9:{port}",
            "mode": mode,
            "start_args": {
                "pd_node_id": node_id,
                "host": "127.0.0.9",
                "pd_decode_rpyc_port": 42000,
            },
        }
    )


async def closed_with(ws: ClientConnection, timeout: float = 5) -> int | None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed:
        pass
    return ws.close_code


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    group = ProcGroup(tmp_path_factory.mktemp("hostile"))
    c = Cluster(group)
    try:
        c.start_master("--token_idle_timeout", "10", "--kv_move_timeout", "5")
        yield c
    finally:
        group.stop_all()


def attack(master: Cluster, port: int, payload: bytes) -> int | None:
    async def run() -> int | None:
        async with connect(f"ws://127.0.0.1:{master.master_port}/pd_register", max_size=None) as ws:
            await ws.send(registration(port))
            try:
                await ws.send(payload)
            except ConnectionClosed:  # closed while the frame was still arriving
                return ws.close_code
            return await closed_with(ws)

    return asyncio.run(run())


def test_build_frames_are_refused_and_the_masters_frames_stay_lightllms(
    master: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    for port, (name, body) in enumerate(rce_frames(marker).items(), start=8100):
        assert attack(master, port, frame(body)) == 1008, name

    def both_registered() -> bool:
        ready = httpx.get(f"{master.url}/readiness", timeout=5).json()
        return bool(ready["prefill_nodes"] == 1 and ready["decode_nodes"] == 1)

    async def serve_one_request() -> tuple[bytes, bytes]:
        """A prefill and a decode node at the edge (this test): read the master's REQ to P,
        drop the client, read the ABORT that follows."""
        url = f"ws://127.0.0.1:{master.master_port}/pd_register"
        async with connect(url) as p, connect(url) as d:
            await p.send(registration(8201, "prefill"))
            await d.send(registration(8202, "decode"))
            await asyncio.to_thread(wait_until, both_registered, 10, "the registrations")
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 4}}
                request = asyncio.create_task(client.post(f"{master.url}/generate", json=body))
                async with asyncio.timeout(5):
                    req = await p.recv()
                request.cancel()
                async with asyncio.timeout(5):
                    abort = await p.recv()
            return bytes(req), bytes(abort)

    req, abort = asyncio.run(serve_one_request())
    kind, payload, _ = CODEC.decode_node_message(req)
    assert kind is ObjType.REQ
    group_id = CODEC.decode_req(payload)[1].group_request_id
    assert abort == CODEC.encode_abort(group_id)  # byte for byte what LightLLM's own writes
    names = [arg for op, arg, _ in pickletools.genops(req) if op.name == "SHORT_BINUNICODE"]
    assert "os" not in names and "system" not in names
    assert not marker.exists()


def test_health_answers_within_a_second_while_a_hash_bomb_arrives(master: Cluster) -> None:
    async def run() -> tuple[int | None, float]:
        async with connect(f"ws://127.0.0.1:{master.master_port}/pd_register") as ws:
            await ws.send(registration(8301))
            await asyncio.sleep(0.2)
            slowest = 0.0
            async with httpx.AsyncClient(timeout=5) as client:
                await ws.send(hash_bomb(40))  # 2**40 hashes in a plain unpickler
                for _ in range(10):
                    start = time.monotonic()
                    assert (await client.get(f"{master.url}/health")).status_code == 200
                    slowest = max(slowest, time.monotonic() - start)
                    await asyncio.sleep(0.05)
            return await closed_with(ws), slowest

    code, slowest = asyncio.run(run())
    assert code == 1008
    assert slowest < 1.0


def test_memo_frame_costs_no_memory(master: Cluster) -> None:
    assert master.master is not None and master.master.popen is not None
    pid = master.master.popen.pid
    before = rss_bytes(pid)
    for port in range(8400, 8405):
        assert attack(master, port, b"\x80\x04Nr\x00\x00\x00\x08.") == 1008  # LONG_BINPUT 2**27
    assert rss_bytes(pid) - before < 100 * 1024 * 1024


def test_an_oversized_frame_closes_with_1009_and_one_log_line(master: Cluster) -> None:
    assert attack(master, 8500, b"\x80" * OVERSIZED) == 1009
    assert master.master is not None
    wait_until(lambda: "larger than --ws_max_size" in master.master.log(), 5, "the log line")  # type: ignore[union-attr]
    line = next(x for x in master.master.log().splitlines() if "larger than --ws_max_size" in x)
    assert "127.0.0.1:" in line  # the peer
    assert "Traceback" not in master.master.log()
    assert httpx.get(f"{master.url}/health", timeout=2).status_code == 200


def test_a_simulated_node_refuses_hostile_frames_from_its_master(tmp_path: Path) -> None:
    """The node side: a master at the edge (this test) sends one attack per link; the node
    closes each link (1008, or 1009 for the oversized frame), reconnects and keeps serving."""
    marker = tmp_path / "pwned"
    attacks = [frame(body) for body in rce_frames(marker).values()]
    attacks += [hash_bomb(40), b"\x80\x04Nr\x00\x00\x00\x08.", b"\x80" * OVERSIZED]
    pending = list(attacks)
    codes: list[int | None] = []
    group = ProcGroup(tmp_path)
    port = free_port()

    async def master_side(ws: ServerConnection) -> None:
        await ws.recv()  # the registration
        if not pending:
            await ws.wait_closed()
            return
        await ws.send(pending.pop(0))
        async with asyncio.timeout(5):
            await ws.wait_closed()
        codes.append(ws.close_code)

    def probe(node_url: str) -> float:
        """The node's /health latency, timed in a thread of its own: the attacking side's
        event loop (busy writing a 17 MiB frame) must not count against the node."""
        slowest = 0.0
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=5) as client:
            while len(codes) < len(attacks) and time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    client.get(f"{node_url}/health")
                except httpx.TransportError:
                    time.sleep(0.2)  # still starting
                    continue
                if len(pending) < len(attacks):  # from the first attack on (not start-up)
                    slowest = max(slowest, time.monotonic() - start)
                time.sleep(0.1)
        return slowest

    async def run(node_url: str) -> float:
        async with serve(master_side, "127.0.0.1", port, max_size=None):
            return await asyncio.to_thread(probe, node_url)

    node = start_sim_node(
        group,
        "prefill",
        0,
        "127.0.0.21",
        "--pd_master_ip",
        "127.0.0.1",
        "--pd_master_port",
        str(port),
    )
    try:
        slowest = asyncio.run(run(node.url))
        log = node.proc.log()
    finally:
        group.stop_all()
    assert codes == [1008] * (len(attacks) - 1) + [1009]
    assert slowest < 1.0
    assert "larger than --ws_max_size" in log and f"127.0.0.1:{port}" in log
    assert "Traceback" not in log
    assert not marker.exists()
