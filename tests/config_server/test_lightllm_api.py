"""LightLLM's config-server API on a real server process: bytes, id ranges, hostile input."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pdlocal.cluster import wait_until
from pdlocal.registry import ConfigServer
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj
from tests.config_server.helpers import http, items, registered_objects

CODEC = LightLLMCodec("v1.1.0")


def ws_url(server: ConfigServer) -> str:
    return f"ws://{server.address}/pd_master_register"


async def close_code(ws: ClientConnection) -> int | None:
    """Wait (bounded) for the server to close the socket; its close code."""
    try:
        async with asyncio.timeout(5):
            await ws.recv()
    except ConnectionClosed:
        pass
    return ws.close_code


async def wait_for(check, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.05)


def test_registered_objects_are_byte_identical_to_lightllms(
    memory_server: ConfigServer, golden_root: Path
) -> None:
    golden = json.loads((golden_root / "v1.1.0" / "registered_objects.json").read_text())["data"]
    masters = CODEC.decode_registered_objects(base64.b64decode(golden))
    assert len(masters) == 2

    async def scenario() -> str:
        async with AsyncExitStack() as stack:
            for count, obj in enumerate(masters.values(), start=1):
                ws = await stack.enter_async_context(connect(ws_url(memory_server)))
                await ws.send(CODEC.encode_pd_master_obj(obj))
                await wait_for(
                    lambda n=count: len(registered_objects(memory_server.url)) == n, "registration"
                )
            await ws.send("heartbeat")
            async with httpx.AsyncClient() as client:
                reply = await client.get(f"{memory_server.url}/registered_objects")
                listed = {m["id"]: m for m in items(memory_server.url, "masters")}
        assert {str(k) for k in masters} == set(listed)
        assert {m["registered_via"] for m in listed.values()} == {"lightllm_websocket"}
        return reply.json()["data"]

    assert asyncio.run(scenario()) == golden
    # The sockets closed: LightLLM forgets a master whose socket closes, so do we.
    wait_until(lambda: registered_objects(memory_server.url) == {}, 5, "masters to be dropped")
    assert items(memory_server.url, "masters") == []


def test_health_endpoints_answer_like_lightllm(memory_server: ConfigServer) -> None:
    for path in ("/health", "/healthz"):
        assert http().get(memory_server.url + path).json() == {"message": "Ok"}
    assert http().head(memory_server.url + "/health").status_code == 200
    for path in ("/liveness", "/readiness"):
        for method in ("GET", "POST"):
            reply = http().request(method, memory_server.url + path)
            assert reply.status_code == 200 and reply.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("path", "size", "floor"),
    [
        ("/allocate_global_unique_id_range", 800_000, 0),
        ("/allocate_global_unique_multimodal_id_range", 8_000_000, 100_000_000),
    ],
)
def test_id_ranges_have_lightllms_sizes_and_never_overlap(
    memory_server: ConfigServer, path: str, size: int, floor: int
) -> None:
    ranges = [http().get(memory_server.url + path).json() for _ in range(5)]
    for r in ranges:
        assert set(r) == {"start_id", "end_id"}
        assert r["end_id"] - r["start_id"] == size
        assert r["start_id"] >= floor
        assert r["end_id"] < 2**63
    starts = sorted(r["start_id"] for r in ranges)
    assert all(b - a >= size for a, b in zip(starts, starts[1:], strict=False))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_the_socket_closed(
    memory_server: ConfigServer, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    async def attack() -> int | None:
        async with connect(ws_url(memory_server)) as ws:
            await ws.send(pickle.dumps(_Evil(marker), protocol=4))
            return await close_code(ws)

    assert asyncio.run(attack()) == 1008
    assert not marker.exists()
    assert registered_objects(memory_server.url) == {}


@pytest.mark.parametrize(
    "first_frame",
    [
        "hello",  # text, not a pickle
        b"not a pickle",
        pickle.dumps({"node_id": 1, "host_ip_port": "10.0.0.1:60011"}, protocol=4),
        CODEC.encode_pd_master_obj(PD_Master_Obj(-1, "10.0.0.1:60011")),
        CODEC.encode_pd_master_obj(PD_Master_Obj(1 << 128, "10.0.0.1:60011")),
        CODEC.encode_pd_master_obj(PD_Master_Obj(5, "no port")),
        CODEC.encode_pd_master_obj(PD_Master_Obj("5", "10.0.0.1:60011")),  # type: ignore[arg-type]
    ],
    ids=["text", "garbage", "dict", "negative-id", "id-too-big", "bad-address", "str-id"],
)
def test_malformed_registration_is_refused_and_changes_nothing(
    memory_server: ConfigServer, first_frame: str | bytes
) -> None:
    before = http().get(f"{memory_server.url}/v1/watch?revision=0").json()

    async def register() -> int | None:
        async with connect(ws_url(memory_server)) as ws:
            await ws.send(first_frame)
            return await close_code(ws)

    assert asyncio.run(register()) == 1008
    assert http().get(f"{memory_server.url}/v1/watch?revision=0").json() == before
    assert registered_objects(memory_server.url) == {}


def test_a_frame_other_than_heartbeat_ends_the_registration(memory_server: ConfigServer) -> None:
    obj = PD_Master_Obj(77, "10.0.0.77:60011")

    async def scenario() -> int | None:
        async with connect(ws_url(memory_server)) as ws:
            await ws.send(CODEC.encode_pd_master_obj(obj))
            await wait_for(lambda: 77 in registered_objects(memory_server.url), "registration")
            await ws.send("heartbeat")
            await ws.send("not a heartbeat")
            return await close_code(ws)

    assert asyncio.run(scenario()) == 1008
    wait_until(lambda: registered_objects(memory_server.url) == {}, 5, "master 77 to be dropped")


def test_build_frames_are_refused_and_what_is_served_is_rebuilt(
    memory_server: ConfigServer, tmp_path: Path
) -> None:
    """Issue 13: a first frame that BUILDs on ObjType or PD_Master_Obj is refused; a master
    registered afterwards is served as our own encoding of its id and address, not the
    bytes it sent (here a protocol-2 pickle without FRAME, memo or the same order)."""
    from tests.integration.test_hostile_peers import rce_frames
    from tests.pdwire.test_hostile_frames import frame, g, s

    marker = tmp_path / "pwned"

    async def send_first(first: bytes) -> int | None:
        async with connect(ws_url(memory_server)) as ws:
            await ws.send(first)
            return await close_code(ws)

    for name, body in rce_frames(marker).items():
        assert asyncio.run(send_first(frame(body))) == 1008, name
    assert registered_objects(memory_server.url) == {}
    odd = (
        b"\x80\x02"
        + g("lightllm.server.pd_io_struct", "PD_Master_Obj")
        + b")\x81}("
        + s("host_ip_port")
        + s("10.0.0.9:60011")
        + s("node_id")
        + b"K\x09ub."
    )

    async def register() -> str:
        async with connect(ws_url(memory_server)) as ws:
            await ws.send(odd)
            await wait_for(lambda: 9 in registered_objects(memory_server.url), "registration")
            async with httpx.AsyncClient() as client:
                data: str = (await client.get(f"{memory_server.url}/registered_objects")).json()[
                    "data"
                ]
                return data

    served = base64.b64decode(asyncio.run(register()))
    assert served == CODEC.encode_registered_objects({9: PD_Master_Obj(9, "10.0.0.9:60011")})
    assert odd not in served
    assert not marker.exists()
    wait_until(lambda: registered_objects(memory_server.url) == {}, 5, "master 9 to be dropped")


def test_an_oversized_frame_closes_with_1009(memory_server: ConfigServer) -> None:
    async def send() -> int | None:
        async with connect(ws_url(memory_server)) as ws:
            try:
                await ws.send(b"\x80" * (65 * 1024))
            except ConnectionClosed:
                return ws.close_code
            return await close_code(ws)

    assert asyncio.run(send()) == 1009
    assert registered_objects(memory_server.url) == {}
    wait_until(lambda: "past --ws_max_size" in memory_server.proc.log(), 5, "the log line")
    assert "Traceback" not in memory_server.proc.log()
