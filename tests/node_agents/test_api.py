"""The agent's HTTP API: routes call the agent, a configured token is required."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from node_agents.api import create_app


class FakeAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return {"state": "RUNNING"}

    async def drain(self, stop: bool) -> dict[str, Any]:
        self.calls.append(("drain", stop))
        return {"drain": {"status": "draining"}}

    def restart(self) -> dict[str, Any]:
        self.calls.append(("restart", None))
        return {"engine": {"state": "STOPPING"}}

    def stop_engine(self) -> dict[str, Any]:
        self.calls.append(("stop", None))
        return {"engine": {"state": "STOPPING"}}


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_routes_call_the_agent() -> None:
    agent = FakeAgent()
    app = create_app(agent, None)
    assert call(app, "GET", "/status").json() == {"state": "RUNNING"}
    assert call(app, "POST", "/drain").status_code == 202
    assert call(app, "POST", "/drain", json={"stop": True}).status_code == 202
    assert call(app, "POST", "/restart").status_code == 202
    assert call(app, "POST", "/stop").status_code == 202
    assert agent.calls == [
        ("status", None), ("drain", False), ("drain", True), ("restart", None), ("stop", None)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_token"),
        ({"Authorization": "Basic secret"}, 401, "missing_token"),
        ({"Authorization": "Bearer wrong"}, 403, "wrong_token"),
    ],
)
def test_configured_token_is_required(headers: dict, status: int, code: str) -> None:
    agent = FakeAgent()
    reply = call(create_app(agent, "secret"), "POST", "/stop", headers=headers)
    assert reply.status_code == status and reply.json()["error"]["code"] == code
    assert agent.calls == []


def test_right_token_passes() -> None:
    reply = call(
        create_app(FakeAgent(), "s"), "GET", "/status", headers={"Authorization": "Bearer s"}
    )
    assert reply.status_code == 200


def test_bad_body_and_unknown_path_answer_the_error_body() -> None:
    app = create_app(FakeAgent(), None)
    bad = call(app, "POST", "/drain", json={"stop": "soon", "x": 1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_body"
    assert call(app, "GET", "/nope").json()["error"]["message"] == "Not Found"
