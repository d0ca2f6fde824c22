"""Calls the config server tests make, and a stand-in master process."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
from pathlib import Path
from typing import Any

import httpx

from pdlocal.cluster import Proc, ProcGroup
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_fake_master(
    group: ProcGroup, config_server: str, node_id: int, address: str, *extra: str
) -> Proc:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return group.python(
        f"master_{node_id}",
        "-m",
        "tests.config_server.fake_master",
        "--config-server",
        config_server,
        "--node-id",
        str(node_id),
        "--address",
        address,
        *extra,
        env={"PYTHONPATH": path},
    )


@functools.cache
def http() -> httpx.Client:
    """One client for all of a test run's calls (creating an httpx client costs ~0.1 s)."""
    return httpx.Client(timeout=10.0)


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def registered_objects(url: str) -> dict[int, PD_Master_Obj]:
    data = http().get(f"{url}/registered_objects").json()["data"]
    return LightLLMCodec().decode_registered_objects(base64.b64decode(data))


def items(url: str, plural: str, token: str | None = None, **params: str) -> list[dict[str, Any]]:
    reply = http().get(f"{url}/v1/{plural}", params=params, headers=auth(token))
    reply.raise_for_status()
    return reply.json()["items"]


def ids(url: str, plural: str, token: str | None = None) -> set[str]:
    return {item["id"] for item in items(url, plural, token)}


def put(
    url: str, plural: str, record_id: str, body: Any, token: str | None = None
) -> httpx.Response:
    return http().put(f"{url}/v1/{plural}/{record_id}", json=body, headers=auth(token))


def node_body(role: str = "prefill", ttl_s: float = 30.0, **extra: Any) -> dict[str, Any]:
    return {"address": "127.0.0.2:8019", "role": role, "state": "RUNNING", "ttl_s": ttl_s, **extra}


def snapshot(url: str, token: str | None = None) -> dict[str, Any]:
    reply = http().get(f"{url}/v1/watch", params={"revision": 0}, headers=auth(token))
    reply.raise_for_status()
    return reply.json()


async def raw_get_json(host: str, port: int, path: str) -> Any:
    """One GET on its own connection. For many truly concurrent requests: httpx's pool slows
    down sharply with hundreds of connections, which would measure the client, not us."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise RuntimeError(f"GET {path}: {head.decode(errors='replace')} {body[:200]!r}")
    return json.loads(body)
