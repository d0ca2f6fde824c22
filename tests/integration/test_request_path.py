"""End to end through one master and 2 prefill + 2 decode simulated nodes (real processes).

Most tests share one cluster (``shared_cluster``) and count what they did as differences of
the nodes' and the master's counters; a test that kills a node or aborts a request has its
own (``cluster``)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from pdlocal.cluster import Cluster
from pdmodel.tokenizer import ModelTokenizer
from tests.integration.echo_model import expected, sse_events
from tests.integration.load import leave_after, until_decoding


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    from pdmodel.tokenizer import DEFAULT_MODEL_DIR

    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


def generate(cluster: Cluster, prompt: str, **params: object) -> httpx.Response:
    body = {"inputs": prompt, "parameters": params}
    return httpx.post(f"{cluster.url}/generate", json=body, timeout=30)


def requests_per_node(cluster: Cluster) -> list[int]:
    """Requests each node has taken so far, in the order the nodes were added."""
    return [n.stats()["requests"] for n in cluster.nodes]


def metric(cluster: Cluster, sample: str) -> float:
    """The value of one sample (name and labels, as exposed) on the master's /metrics."""
    for line in httpx.get(f"{cluster.url}/metrics", timeout=5).text.splitlines():
        if line.rpartition(" ")[0] == sample:
            return float(line.rpartition(" ")[2])
    return 0.0


def test_master_lists_its_nodes_with_polled_load(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    assert requests_per_node(cluster) == [0, 0, 0, 0]  # no traffic yet: the module's first test

    def listing() -> list[dict]:
        return httpx.get(f"{cluster.url}/v1/nodes", timeout=5).json()["items"]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(n["reported_usage"] is None for n in listing()):
        time.sleep(0.1)
    items = listing()
    assert sorted(n["role"] for n in items) == ["decode", "decode", "prefill", "prefill"]
    for n in items:
        assert isinstance(n["reported_usage"], float)  # from /token_load, with no traffic at all
        assert n["breaker"] == "closed" and n["draining"] is False
        assert n["connected_for_s"] >= 0 and n["in_flight_requests"] == 0


def test_generate_returns_the_exact_text(shared_cluster: Cluster, tok: ModelTokenizer) -> None:
    cluster = shared_cluster
    r = generate(cluster, "What is AI?", max_new_tokens=12)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "generated_text": ["What is AI?What is AI?"],
        "count_output_tokens": 9,
        "finish_reason": "stop",
        "prompt_tokens": 4,
    }
    text, count, reason = expected(tok, "Tell me a joke about computers.", 40, ignore_eos=True)
    r = generate(cluster, "Tell me a joke about computers.", max_new_tokens=40, ignore_eos=True)
    assert (r.json()["generated_text"][0], r.json()["count_output_tokens"]) == (text, count)
    assert r.json()["finish_reason"] == reason == "length"


def test_stop_sequences_end_generation_after_the_stop_text(shared_cluster: Cluster) -> None:
    r = generate(shared_cluster, "What is AI?", max_new_tokens=12, stop_sequences=[" AI"])
    assert r.json()["generated_text"] == ["What is AI"]
    assert r.json()["finish_reason"] == "stop"


def test_return_details_lists_every_token(shared_cluster: Cluster) -> None:
    r = generate(shared_cluster, "What is AI?", max_new_tokens=3, return_details=True)
    tokens = r.json()["tokens"]
    assert [t["text"] for t in tokens] == ["What", " is", " AI"]
    assert [t["count_output_tokens"] for t in tokens] == [1, 2, 3]


def test_generate_stream_sends_lightllm_events(shared_cluster: Cluster) -> None:
    body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 5}}
    with httpx.stream("POST", f"{shared_cluster.url}/generate_stream", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.startswith("data:{")
    events = sse_events(raw)
    assert [e["token"]["text"] for e in events] == ["What", " is", " AI", "?", "What"]
    assert [e["token"]["count_output_tokens"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["finished"] for e in events] == [False] * 4 + [True]
    assert events[-1]["finish_reason"] == "length"
    assert all(e["token"]["prompt_tokens"] == 4 and e["generated_text"] is None for e in events)


def test_streams_keep_the_clients_request_id_or_get_a_uuid4(shared_cluster: Cluster) -> None:
    body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 2}}
    url = f"{shared_cluster.url}/generate_stream"
    kept = httpx.post(url, json=body, headers={"X-Request-Id": "abc-123"}, timeout=30)
    assert kept.headers["x-request-id"] == "abc-123"
    made = {httpx.post(url, json=body, timeout=30).headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3
    assert all(
        uuid.UUID(made_id).version == 4 and uuid.UUID(made_id).hex == made_id for made_id in made
    )


def test_one_token_requests_finish_at_prefill(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    before = requests_per_node(cluster)
    for _ in range(4):
        r = generate(cluster, "What is AI?", max_new_tokens=1)
        assert r.json() == {
            "generated_text": ["What"],
            "count_output_tokens": 1,
            "finish_reason": "length",
            "prompt_tokens": 4,
        }
    added = [b - a for a, b in zip(before, requests_per_node(cluster), strict=True)]
    assert added == [2, 0, 2, 0]  # nodes were added prefill0, decode0, prefill1, decode1


def test_round_robin_uses_every_node(shared_cluster: Cluster) -> None:
    before = requests_per_node(shared_cluster)
    for _ in range(4):
        assert generate(shared_cluster, "Hello world!", max_new_tokens=4).status_code == 200
    added = [b - a for a, b in zip(before, requests_per_node(shared_cluster), strict=True)]
    assert added == [2, 2, 2, 2]


async def _stream(
    client: httpx.AsyncClient, url: str, prompt: str, n: int, decoding: list[str] | None = None
) -> tuple[str, list[dict]]:
    """One stream's text and events; ``prompt`` is appended to ``decoding`` at its first event."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": n, "ignore_eos": True}}
    raw = ""
    async with client.stream("POST", f"{url}/generate_stream", json=body) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_text():
            raw += chunk
            if decoding is not None and "data:" in raw and prompt not in decoding:
                decoding.append(prompt)
    events = sse_events(raw)
    return "".join(e["token"]["text"] for e in events if "token" in e), events


def test_fifty_concurrent_streams_all_get_their_text(
    shared_cluster: Cluster, tok: ModelTokenizer
) -> None:
    cluster = shared_cluster
    prompts = [f"Question {i}: how many tokens per second can one GPU generate?" for i in range(50)]

    async def run() -> list[tuple[str, list[dict]]]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(_stream(client, cluster.url, p, 32) for p in prompts))

    results = asyncio.run(run())
    for prompt, (text, events) in zip(prompts, results, strict=True):
        assert text == expected(tok, prompt, 32, ignore_eos=True)[0]
        assert events[-1]["finished"] and events[-1]["finish_reason"] == "length"


def test_killed_decode_node_ends_its_streams_with_an_error(cluster: Cluster) -> None:
    victim = cluster.node("decode", 0)

    async def run() -> tuple[list[tuple[str, list[dict]]], float]:
        async with httpx.AsyncClient(timeout=60) as client:
            decoding: list[str] = []
            tasks = [
                asyncio.create_task(_stream(client, cluster.url, f"Hello world {i}", 300, decoding))
                for i in range(6)
            ]
            await until_decoding(decoding, 6)
            victim.proc.kill()
            killed_at = time.monotonic()
            results = await asyncio.gather(*tasks)
            return results, time.monotonic() - killed_at

    results, after_kill = asyncio.run(run())
    failed = [events for _, events in results if "error" in events[-1]]
    completed = [events for _, events in results if events[-1].get("finish_reason") == "length"]
    assert len(failed) == 3 and len(completed) == 3
    for events in failed:
        assert events[-1]["error"]["type"] == "node_failed"
        assert events[-1]["finished"] is True
        assert len(events) > 1  # tokens came before the failure
    assert after_kill < 10  # the surviving streams' remaining tokens, not a timeout
    assert generate(cluster, "What is AI?", max_new_tokens=12).status_code == 200


def test_client_disconnect_aborts_on_both_nodes(cluster: Cluster) -> None:
    body = {"inputs": "Hello world!", "parameters": {"max_new_tokens": 2000, "ignore_eos": True}}
    leave_after(f"{cluster.url}/generate_stream", body, 5)

    def aborts(mode: str) -> int:
        return sum(n.stats()["aborts"] for n in cluster.nodes if n.mode == mode)

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (aborts("prefill") < 1 or aborts("decode") < 1):
        time.sleep(0.05)
    assert (aborts("prefill"), aborts("decode")) == (1, 1)
    decode_kv = [n.stats()["kv_used_tokens"] for n in cluster.nodes if n.mode == "decode"]
    assert decode_kv == [0, 0]  # the aborted request's cache was freed


def test_request_id_is_kept_and_metrics_count_requests(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    ok = 'pd_requests_total{endpoint="generate",status="200"}'
    ttft = "pd_time_to_first_token_seconds_count"
    before = metric(cluster, ok), metric(cluster, ttft)
    body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 3}}
    r = httpx.post(f"{cluster.url}/generate", json=body, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(httpx.post(f"{cluster.url}/generate", json=body).headers["x-request-id"]) == 32
    assert (metric(cluster, ok) - before[0], metric(cluster, ttft) - before[1]) == (2.0, 2.0)
    assert "pd_node_breaker_state{" in httpx.get(f"{cluster.url}/metrics", timeout=5).text
