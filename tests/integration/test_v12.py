"""LightLLM v1.2.0 nodes end to end: one master and simulated v1.2.0 nodes (real processes).

The decode-first flow (prompt-id upload, D's KV reservation, the descriptor relayed to P,
tokens from both nodes) gives the same answers as the older protocol; outputs past a block
are one stream; a master serves v1.1.0 and v1.2.0 pools at once, pairing within a version.
"""

from __future__ import annotations

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup, wait_until
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from tests.integration.echo_model import expected, sse_events
from tests.integration.multimaster import MultiMasterCluster

V12 = ["--lightllm_version", "v1.2.0"]


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


def generate(url: str, prompt: str, **params: object) -> httpx.Response:
    return httpx.post(f"{url}/generate", json={"inputs": prompt, "parameters": params}, timeout=30)


def stream(url: str, prompt: str, **params: object) -> list[dict]:
    body = {"inputs": prompt, "parameters": params}
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r.read().decode())


def nodes(url: str) -> list[dict]:
    return httpx.get(f"{url}/v1/nodes", timeout=5).json()["items"]


def test_v12_pool_answers_exactly_on_every_endpoint(procs: ProcGroup, tok: ModelTokenizer) -> None:
    c = Cluster(procs)
    c.start_master("--kv_move_timeout", "5", "--token_idle_timeout", "10")
    for i in range(2):
        c.add_node("prefill", i, *V12, "--max_req_total_len", "256")
        c.add_node("decode", i, *V12, "--max_req_total_len", "256")
    c.wait_ready(2, 2)

    r = generate(c.url, "What is AI?", max_new_tokens=12)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "generated_text": ["What is AI?What is AI?"],
        "count_output_tokens": 9,
        "finish_reason": "stop",
        "prompt_tokens": 4,
    }
    prompt = "Tell me a joke about computers."
    text, count, _ = expected(tok, prompt, 40, ignore_eos=True)
    r = generate(c.url, prompt, max_new_tokens=40, ignore_eos=True)
    assert (r.json()["generated_text"][0], r.json()["count_output_tokens"]) == (text, count)

    events = stream(c.url, "What is AI?", max_new_tokens=5)
    assert [e["token"]["text"] for e in events] == ["What", " is", " AI", "?", "What"]
    assert [e["token"]["count_output_tokens"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["finished"] for e in events] == [False] * 4 + [True]

    model = httpx.get(f"{c.url}/v1/models", timeout=5).json()["data"][0]["id"]
    completion = httpx.post(
        f"{c.url}/v1/completions",
        json={"model": model, "prompt": "What is AI?", "max_tokens": 12},
        timeout=30,
    ).json()
    assert completion["choices"][0]["text"] == "What is AI?What is AI?"
    chat = httpx.post(
        f"{c.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6},
        timeout=30,
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]

    decode_requests = sum(n.stats()["requests"] for n in c.nodes if n.mode == "decode")
    for _ in range(4):  # one token: P and D both take part, as in LightLLM v1.2.0
        r = generate(c.url, "What is AI?", max_new_tokens=1)
        assert r.json()["generated_text"] == ["What"] and r.json()["finish_reason"] == "length"
    assert sum(n.stats()["requests"] for n in c.nodes if n.mode == "decode") == decode_requests + 4

    # D's prefix cache holds all but the last token of a repeated 17-token prompt: D then
    # computes the first token itself and P sends none (LightLLM's PDPrefillNodeStopGenToken)
    text = "Once upon a time there was a prefix cache on a decode node. " * 2
    repeated = next(text[:n] for n in range(len(text)) if len(tok.encode(text[:n])) == 17)
    first = generate(c.url, repeated, max_new_tokens=4).json()
    prefill_tokens = sum(n.stats()["tokens"] for n in c.nodes if n.mode == "prefill")
    decodes = [n for n in c.nodes if n.mode == "decode"]
    for _ in range(len(decodes)):  # round robin: each decode node sees it once more
        assert generate(c.url, repeated, max_new_tokens=4).json() == first
    assert sum(n.stats()["tokens"] for n in c.nodes if n.mode == "prefill") < prefill_tokens + 2

    too_long = generate(c.url, "What is AI?", max_new_tokens=300)  # nodes: 256 at most
    assert too_long.status_code == 400 and "max_req_total_len" in too_long.text

    listed = nodes(c.url)
    assert {(n["lightllm_version"], n["pd_trans_mode"]) for n in listed} == {("v1.2.0", "nccl")}
    assert all(n["max_req_total_len"] == 256 for n in listed)
    metrics = httpx.get(f"{c.url}/metrics", timeout=5).text
    assert metrics.count('lightllm_version="v1.2.0"') >= 4
    assert all(n.stats()["kv_used_tokens"] == 0 for n in c.nodes)


def test_long_output_runs_in_blocks_and_streams_as_one(procs: ProcGroup) -> None:
    c = Cluster(procs)
    c.start_master("--pd_split_max_new_tokens", "4")
    c.add_node("prefill", 0, *V12)
    c.add_node("decode", 0, *V12)
    c.wait_ready(1, 1)
    events = stream(c.url, "What is AI?", max_new_tokens=10, ignore_eos=True)
    assert [e["token"]["count_output_tokens"] for e in events] == list(range(1, 11))
    assert [e["finished"] for e in events] == [False] * 9 + [True]
    assert events[-1]["finish_reason"] == "length"
    assert {e["token"]["prompt_tokens"] for e in events} == {4}
    # the echo model repeats its prompt, and each block's prompt is the text so far
    assert "".join(e["token"]["text"] for e in events) == "What is AI?What is AI?What is"
    assert c.node("decode").stats()["requests"] == 3  # blocks of 4 + 4 + 2


def test_mixed_pools_pair_within_one_version(procs: ProcGroup, tok: ModelTokenizer) -> None:
    c = Cluster(procs)
    c.start_master()
    c.add_node("prefill", 0, "--lightllm_version", "v1.1.0")
    c.add_node("decode", 0, "--lightllm_version", "v1.1.0")
    c.add_node("prefill", 1, "--lightllm_version", "fc72ffa")
    c.add_node("decode", 1, "--lightllm_version", "fc72ffa")
    c.add_node("prefill", 2, *V12)
    c.add_node("decode", 2, *V12)
    c.wait_ready(3, 3)
    versions = {n["address"]: n["lightllm_version"] for n in nodes(c.url)}
    assert sorted(versions.values()) == ["fc72ffa"] * 2 + ["v1.1.0"] * 2 + ["v1.2.0"] * 2
    prompts = [f"Mixed cluster request {i}" for i in range(9)]
    for prompt in prompts:
        r = generate(c.url, prompt, max_new_tokens=6, ignore_eos=True)
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"][0] == expected(tok, prompt, 6, ignore_eos=True)[0]
    for i in range(3):  # each pair served its share, and only with its own partner
        p, d = c.node("prefill", i).stats(), c.node("decode", i).stats()
        assert p["requests"] == d["requests"] == 3
        assert p["kv_handoffs"] == 3


def test_seed_and_logit_bias_pair_with_v12_nodes_in_a_mixed_pool(procs: ProcGroup) -> None:
    """Only v1.2.0 nodes' requests carry ``seed`` and banned tokens: such requests go to the
    v1.2.0 pair whatever the policy's turn, and get a 400 naming the field only when no
    v1.2.0 pair is connected."""
    c = Cluster(procs)
    c.start_master()
    c.add_node("prefill", 0, "--lightllm_version", "v1.1.0")
    c.add_node("decode", 0, "--lightllm_version", "v1.1.0")
    c.add_node("prefill", 1, *V12)
    c.add_node("decode", 1, *V12)
    c.wait_ready(2, 2)
    for i in range(4):  # round robin alone would send every other one to v1.1.0
        r = generate(c.url, f"Seeded {i}", max_new_tokens=4, seed=7 + i)
        assert r.status_code == 200, r.text
        r = generate(c.url, f"Banned {i}", max_new_tokens=4, logit_bias={"5": -100})
        assert r.status_code == 200, r.text
    body = {"prompt": "hi", "max_tokens": 3, "seed": 3, "stream": True}
    with httpx.stream("POST", f"{c.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and b"data: [DONE]" in r.read()
    assert c.node("prefill", 0).stats()["requests"] == 0
    assert c.node("prefill", 1).stats()["requests"] == 9
    for i in range(4):  # plain requests still use both pairs
        assert generate(c.url, f"Plain {i}", max_new_tokens=4).status_code == 200
    assert c.node("prefill", 0).stats()["requests"] == 2
    c.node("decode", 1).proc.stop()
    wait_until(lambda: len(nodes(c.url)) == 3, 10, "the v1.2.0 decode node to leave")
    r = generate(c.url, "Seeded again", max_new_tokens=4, seed=7)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("seed: the connected decode nodes run ")
    assert generate(c.url, "Plain again", max_new_tokens=4).status_code == 200


def test_mixed_pools_through_the_config_server_and_two_masters(
    procs: ProcGroup, tok: ModelTokenizer
) -> None:
    mm = MultiMasterCluster(procs)
    config = mm.start_config_server()
    masters = [mm.start_master(), mm.start_master()]
    for i, version in enumerate(["v1.1.0", "v1.2.0"]):
        mm.add_node("prefill", i, "--lightllm_version", version)
        mm.add_node("decode", i, "--lightllm_version", version)
    mm.wait_joined(masters, 2, 2)
    for i, master in enumerate(masters * 4):
        prompt = f"Question {i} to a mixed cluster"
        r = generate(master.url, prompt, max_new_tokens=8, ignore_eos=True)
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"][0] == expected(tok, prompt, 8, ignore_eos=True)[0]
    stats = [n.stats() for n in mm.nodes]  # prefill0, decode0 (v1.1.0), prefill1, decode1
    assert stats[0]["requests"] == stats[1]["requests"] == 4
    assert stats[2]["requests"] == stats[3]["requests"] == 4

    def listed() -> bool:  # the masters' leases carry each node's version
        items = httpx.get(f"{config.url}/v1/nodes", timeout=5).json()["items"]
        return sorted(n["info"].get("lightllm_version", "") for n in items) == [
            "v1.1.0", "v1.1.0", "v1.2.0", "v1.2.0",
        ]  # fmt: skip

    wait_until(listed, 10, "the config server to list every node's version")
