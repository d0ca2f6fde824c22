"""Draining through the masters' admin API (MockTransport masters and config server)."""

from __future__ import annotations

import asyncio
import base64

import httpx

from node_agents.drain import Drainer, MasterDirectory
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj
from tests.node_agents.fakes import FakeClock

ME = "127.0.0.2:8019"


class Masters:
    """Masters on 10.0.0.1:60011 and 10.0.0.2:60011 and a config server listing them."""

    def __init__(self) -> None:
        self.nodes = {
            "10.0.0.1:60011": [
                {"node_id": "7", "address": ME, "draining": False, "in_flight_requests": 2},
                {"node_id": "8", "address": "127.0.0.3:8019", "draining": False},
            ],
            "10.0.0.2:60011": [
                {"node_id": "7", "address": ME, "draining": False, "in_flight_requests": 1}
            ],
        }
        self.posts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        if request.url.path == "/registered_objects":
            objs = {i: PD_Master_Obj(i, a) for i, a in enumerate(self.nodes)}
            data = base64.b64encode(LightLLMCodec.encode_registered_objects(objs)).decode()
            return httpx.Response(200, json={"data": data})
        if request.method == "GET":
            return httpx.Response(200, json={"items": self.nodes[host]})
        node_id = request.url.path.split("/")[3]
        self.posts.append(f"{host}/{node_id}")
        for node in self.nodes[host]:
            if node["node_id"] == node_id:
                node["draining"] = True
        return httpx.Response(200, json={})


def drainer(
    masters: Masters, clock: FakeClock, pd_master: str | None = None, directly: bool = True
) -> Drainer:
    client = httpx.AsyncClient(transport=httpx.MockTransport(masters))
    directory = MasterDirectory(client, pd_master, "10.0.0.9:60088")
    return Drainer(
        client, directory, ME, "prefill", None, 30.0, clock, poll_s=0.01, mark_directly=directly
    )


def test_marks_the_node_on_every_master_the_config_server_lists() -> None:
    masters = Masters()
    result = asyncio.run(drainer(masters, FakeClock()).mark())
    assert masters.posts == ["10.0.0.1:60011/7", "10.0.0.2:60011/7"]
    assert result == {
        "10.0.0.1:60011": {"nodes": 1, "draining": True, "in_flight": 2},
        "10.0.0.2:60011": {"nodes": 1, "draining": True, "in_flight": 1},
    }
    asyncio.run(drainer(masters, FakeClock()).mark())
    assert len(masters.posts) == 2  # already draining: not marked again


def test_through_the_config_server_it_waits_for_every_master_to_show_the_drain() -> None:
    masters, clock, done = Masters(), FakeClock(), []
    d = drainer(masters, clock, directly=False)
    for nodes in masters.nodes.values():
        for node in nodes:
            node["in_flight_requests"] = 0

    async def go() -> None:
        marked = asyncio.Event()
        task = asyncio.create_task(d.run(lambda: done.append(d.status), marked))
        await asyncio.sleep(0.05)
        assert masters.posts == [] and not marked.is_set() and d.status == "draining"
        masters.nodes["10.0.0.1:60011"][0]["draining"] = True  # the config server's watch
        await asyncio.sleep(0.05)
        assert not marked.is_set() and done == []  # one master still selects the node
        masters.nodes["10.0.0.2:60011"][0]["draining"] = True
        await asyncio.sleep(0.05)
        assert marked.is_set()
        task.cancel()

    asyncio.run(go())
    assert masters.posts == [] and done == ["drained"]


def test_single_master_is_asked_alone() -> None:
    masters = Masters()
    asyncio.run(drainer(masters, FakeClock(), pd_master="10.0.0.2:60011").mark())
    assert masters.posts == ["10.0.0.2:60011/7"]


def test_drained_once_nothing_is_in_flight_then_the_callback_runs_once() -> None:
    masters, clock, done = Masters(), FakeClock(), []
    d = drainer(masters, clock)

    async def go() -> None:
        task = asyncio.create_task(d.run(lambda: done.append(d.status)))
        await asyncio.sleep(0.05)
        assert d.status == "draining" and d.in_flight == 3 and done == []
        for nodes in masters.nodes.values():
            for node in nodes:
                node["in_flight_requests"] = 0
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(go())
    assert d.status == "drained" and done == ["drained"]


def test_times_out_when_requests_never_finish() -> None:
    masters, clock, done = Masters(), FakeClock(), []
    d = drainer(masters, clock)

    async def go() -> None:
        task = asyncio.create_task(d.run(lambda: done.append(d.status)))
        await asyncio.sleep(0.03)
        clock.advance(30)
        await asyncio.sleep(0.03)
        task.cancel()

    asyncio.run(go())
    assert done == ["timed_out"]


def test_unreachable_masters_are_reported_not_raised() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    d = Drainer(
        client, MasterDirectory(client, "10.0.0.1:60011", None), ME, "prefill", None, 1, FakeClock()
    )
    result = asyncio.run(d.mark())
    assert "ConnectError" in result["10.0.0.1:60011"]["error"]
