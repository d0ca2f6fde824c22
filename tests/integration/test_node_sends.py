"""The master's frames to its nodes (REQ, ABORT, v1.2.0's decode-node info) through real
processes: a burst arrives whole and in order at simulated nodes of every LightLLM release;
a node that stops reading and then vanishes fails its requests with an error, no hang."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from tests.integration.echo_model import expected

VERSIONS = ["v1.1.0", "fc72ffa", "v1.2.0"]
DEADLINES = ("--kv_move_timeout", "5", "--token_idle_timeout", "10")


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


def one_pair(procs: ProcGroup, version: str, *master: str) -> Cluster:
    c = Cluster(procs)
    c.start_master("--lightllm_version", version, *DEADLINES, *master)
    c.add_node("prefill", 0, "--lightllm_version", version)
    c.add_node("decode", 0, "--lightllm_version", version)
    c.wait_ready(1, 1)
    return c


async def generate(client: httpx.AsyncClient, url: str, prompt: str) -> httpx.Response:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 6}}
    return await client.post(f"{url}/generate", json=body)


async def abandoned_stream(client: httpx.AsyncClient, url: str, prompt: str) -> None:
    """A client that leaves after its first token: the master ABORTs the request."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 400, "ignore_eos": True}}
    async with client.stream("POST", f"{url}/generate_stream", json=body) as r:
        assert r.status_code == 200
        async for _ in r.aiter_bytes():
            return


@pytest.mark.parametrize("version", VERSIONS)
def test_a_burst_reaches_every_release_whole_and_in_order(
    procs: ProcGroup, tok: ModelTokenizer, version: str
) -> None:
    c = one_pair(procs, version)
    prompts = [f"Request {i}:" + " more words" * (i % 9 * 6) for i in range(48)]
    gone = [f"Leaving {i}" for i in range(8)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            leaving = [abandoned_stream(client, c.url, p) for p in gone]
            answers = [generate(client, c.url, p) for p in prompts]
            done = await asyncio.gather(*leaving, *answers)
            return [r for r in done if r is not None]

    answers = asyncio.run(burst())
    for prompt, r in zip(prompts, answers, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"][0] == expected(tok, prompt, 6)[0]
    prefill = c.node("prefill").stats()
    assert prefill["requests"] == len(prompts) + len(gone)  # every REQ decoded, none lost
    assert prefill["masters_connected"] == 1  # no frame made a node hang up

    async def after() -> httpx.Response:  # the ABORTs in between left both sockets serving
        async with httpx.AsyncClient(timeout=30) as client:
            return await generate(client, c.url, "And one more")

    r = asyncio.run(after())
    assert r.status_code == 200
    assert r.json()["generated_text"][0] == expected(tok, "And one more", 6)[0]


def test_a_node_that_stops_reading_then_vanishes_fails_its_requests(procs: ProcGroup) -> None:
    c = one_pair(procs, "v1.1.0", "--first_token_timeout", "60")
    prefill = c.node("prefill")
    count = 160
    long = " words" * 6000  # ~6 MB of REQ frames in all: past what the kernel's buffers take

    async def scenario() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=30) as client:
            prefill.proc.kill(signal.SIGSTOP)  # reads nothing from now on
            waiting = [generate(client, c.url, f"Waiting {i}{long}") for i in range(count)]
            tasks = [asyncio.create_task(request) for request in waiting]
            await asyncio.sleep(3)
            assert not any(t.done() for t in tasks)
            killed_at = time.monotonic()
            prefill.proc.kill(signal.SIGKILL)
            answers = await asyncio.gather(*tasks)
            return answers, time.monotonic() - killed_at

    answers, after_s = asyncio.run(scenario())
    assert after_s < 10, "requests waited on after their node was gone"
    for r in answers:
        assert r.status_code >= 500 and "error" in r.json(), r.text
    health = httpx.get(f"{c.url}/readiness", timeout=5).json()
    assert health["prefill_nodes"] == 0 and health["decode_nodes"] == 1
