"""A small bounded load generator for integration tests: every request ends or is called hung."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Outcome:
    status: int
    text: str = ""
    finish_reason: str | None = None
    error: dict | None = None
    hung: bool = False
    seconds: float = 0.0
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.status == 200
            and self.error is None
            and not self.hung
            and self.finish_reason is not None
        )


@dataclass
class Tally:
    fault: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def row(self) -> tuple[str, int, int, int, int]:
        ok = sum(o.ok for o in self.outcomes)
        hung = sum(o.hung for o in self.outcomes)
        clean = sum(not o.ok and not o.hung and o.error is not None for o in self.outcomes)
        return self.fault, len(self.outcomes), ok, clean, hung


def print_fault_table(first_column: str, tallies: list[Tally]) -> None:
    """One row per fault (sent, succeeded, failed with a clean error, hung), aligned."""
    header = (first_column, "sent", "succeeded", "failed (clean error)", "hung")
    rows = [header] + [tuple(str(x) for x in t.row) for t in tallies]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


async def stream_one(
    client: httpx.AsyncClient,
    url: str,
    prompt: str,
    max_new_tokens: int,
    timeout: float,
    decoding: list[str] | None = None,
) -> Outcome:
    """One stream; ``prompt`` is appended to ``decoding`` at its first token."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "ignore_eos": True}}
    started = time.monotonic()
    outcome = Outcome(status=0)
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", f"{url}/generate_stream", json=body) as r:
                outcome.status = r.status_code
                if r.status_code != 200:
                    outcome.error = json.loads(await r.aread())["error"]
                    outcome.retry_after = r.headers.get("retry-after")
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:])
                        if "error" in event:
                            outcome.error = event["error"]
                            break
                        if decoding is not None and prompt not in decoding:
                            decoding.append(prompt)
                        outcome.text += event["token"]["text"]
                        outcome.finish_reason = event["finish_reason"]
    except TimeoutError:
        outcome.hung = True
    outcome.seconds = time.monotonic() - started
    return outcome


def leave_after(url: str, body: dict[str, Any], events: int, timeout: float = 30) -> None:
    """Stream ``body`` to ``url`` and hang up after ``events`` data events, as a client that
    goes away mid-stream."""
    with httpx.stream("POST", url, json=body, timeout=timeout) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen == events:
                return
    raise AssertionError(f"the stream ended after {seen} of {events} events")


async def until_decoding(decoding: list[Any], n: int, timeout: float = 30) -> None:
    """Wait until ``n`` streams have had their first token: each is then on its decode node
    (a fixed sleep is not enough on a loaded machine)."""
    async with asyncio.timeout(timeout):
        while len(decoding) < n:
            await asyncio.sleep(0.02)


async def run_load(
    url: str, prompts: list[str], max_new_tokens: int, concurrency: int, timeout: float = 30
) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)

    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def one(prompt: str) -> Outcome:
            async with gate:
                return await stream_one(client, url, prompt, max_new_tokens, timeout)

        return list(await asyncio.gather(*(one(p) for p in prompts)))
