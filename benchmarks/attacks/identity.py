"""A peer speaks only for itself: taking a live node's or master's id, forging a KV hand-off's
status, and node sockets or id ranges from outside ``--allow-cidr``."""

from __future__ import annotations

import asyncio
import json

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from benchmarks.attacks.attacker import (
    ATTACKER,
    REFUSED_CODES,
    attacker_socket,
    close_code,
    frame_refused,
    registration,
)
from benchmarks.attacks.target import REGISTER_TOKEN, Outcome, Target, generate, listed_masters
from benchmarks.common import QUIET
from pdlocal.cluster import free_port, start_master_proc
from pdlocal.registry import start_config_server
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj


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


async def outside_allow_cidr(target: Target) -> Outcome:
    """A master with --allow-cidr refuses node sockets from other networks at the handshake,
    also from a loopback peer that names an allowed address in X-Forwarded-For."""
    port = free_port()
    proc = start_master_proc(
        target.procs, "cidr-master", port, *QUIET, "--allow-cidr", "10.0.0.0/8"
    )
    forged = {"X-Forwarded-For": "10.0.0.5", "X-Real-IP": "10.0.0.5"}
    refused = []
    try:
        for path in ("/pd_register", "/kv_move_status"):
            for local, headers in ((ATTACKER, None), ("127.0.0.1", forged)):
                try:
                    async with connect(
                        f"ws://127.0.0.1:{port}{path}",
                        local_addr=(local, 0),
                        additional_headers=headers,
                        open_timeout=5,
                    ) as ws:
                        await ws.send(json.dumps(registration(7, "prefill")))
                        refused.append(await close_code(ws) in REFUSED_CODES)
                except InvalidStatus as exc:
                    refused.append(exc.response.status_code == 403)
    finally:
        proc.stop()
    return Outcome("node sockets from outside --allow-cidr", len(refused), sum(refused))


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
