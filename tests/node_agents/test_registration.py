"""The registrar's calls to the config server's /v1 API (MockTransport stands in for it)."""

from __future__ import annotations

import asyncio
import json

import httpx

from node_agents.registration import Registrar


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json={"ok": True})

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.method == "PUT"]


def registrar(recorder: Recorder, describe=None, token: str | None = "reg") -> Registrar:
    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    state = describe or (lambda: {"address": "127.0.0.2:8019", "role": "prefill", "state": "X"})
    return Registrar(client, "127.0.0.1:60088", "p0", 9.0, state, token, retry_s=0.01)


def test_register_puts_the_node_with_its_lease_and_token() -> None:
    rec = Recorder()
    assert asyncio.run(registrar(rec).register())
    request = rec.requests[0]
    assert (request.method, str(request.url)) == ("PUT", "http://127.0.0.1:60088/v1/nodes/p0")
    assert request.headers["authorization"] == "Bearer reg"
    assert rec.bodies() == [
        {"address": "127.0.0.2:8019", "role": "prefill", "state": "X", "ttl_s": 9.0}
    ]


def test_a_change_is_sent_at_once_not_at_the_next_renewal() -> None:
    rec, states = Recorder(), iter(["STARTING", "RUNNING", "RUNNING"])
    reg = registrar(rec, lambda: {"state": next(states)})

    async def go() -> None:
        task = asyncio.create_task(reg.run())
        await asyncio.sleep(0.05)
        reg.changed()
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(go())
    assert [b["state"] for b in rec.bodies()] == ["STARTING", "RUNNING"]  # renewal is 3 s away


def test_failures_are_remembered_and_retried_soon() -> None:
    rec = Recorder()
    rec.status = 401
    reg = registrar(rec)

    async def go() -> None:
        task = asyncio.create_task(reg.run())
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(go())
    assert len(rec.requests) >= 3
    assert not reg.registered and reg.last_error is not None and "HTTP 401" in reg.last_error


def test_deregister_deletes_the_node() -> None:
    rec = Recorder()
    asyncio.run(registrar(rec, token=None).deregister())
    assert [(r.method, r.url.path) for r in rec.requests] == [("DELETE", "/v1/nodes/p0")]
    assert "authorization" not in rec.requests[0].headers


def test_renews_every_third_of_the_lease() -> None:
    rec = Recorder()
    client = httpx.AsyncClient(transport=httpx.MockTransport(rec))
    reg = Registrar(client, "127.0.0.1:60088", "p0", 0.06, lambda: {"state": "RUNNING"})

    async def go() -> None:
        task = asyncio.create_task(reg.run())
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(go())
    assert 4 <= len(rec.requests) <= 6  # at 0, 0.02, 0.04, 0.06, 0.08 s
