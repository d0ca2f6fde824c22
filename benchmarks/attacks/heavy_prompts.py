"""Heavy prompts: multi-megabyte prompts and huge message lists, refused without stalling
other clients (timed on ``/health`` from a thread)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from benchmarks.attacks.target import Outcome, Target
from pdmaster.settings import PROMPT_BYTES_PER_TOKEN


async def heavy_prompts(target: Target, seconds: float = 2.0) -> Outcome:
    """3.9 MB prompts (over the byte limit: refused before tokenizing) and 190 KB ones
    (tokenized, ~0.4 s each, then refused as too many tokens) from 4 clients, while
    another client times /health."""
    bodies = [encoded({"inputs": english_text(n)}) for n in (3_900_000, 190_000)]
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


def english_text(n: int) -> str:
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
