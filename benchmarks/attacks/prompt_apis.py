"""Oversized and heavy prompts on every client API that carries one (OpenAI, Anthropic,
LightLLM): a 413 naming the field, and the work done off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.attacks.heavy_prompts import encoded, english_text, health_latency
from benchmarks.attacks.target import Attack, Outcome, Target
from pdmaster.settings import PROMPT_BYTES_PER_TOKEN


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
                    reply = await client.post(
                        url + api.path, json=api.body(english_text(size), model)
                    )
                    oversized.append(names_field(reply, api.field))
        loads = [encoded(api.body(english_text(190_000), model)) for api in apis]
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
