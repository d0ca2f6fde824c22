"""Hostile load signals: a node reporting a poisoned usage rate, and a node whose
``/token_load`` answer never ends or drips."""

from __future__ import annotations

import asyncio
import json

import httpx

from benchmarks.attacks.attacker import (
    ATTACKER,
    REFUSED_CODES,
    attacker_socket,
    close_code,
    registration,
)
from benchmarks.attacks.target import Outcome, Target, generate
from pdlocal.cluster import rss_bytes
from pdwire.lightllm import LightLLMCodec
from pdwire.structs import FinishStatus


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
