"""The OpenAI-compatible API end to end: a real master with simulated prefill/decode nodes."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from tests.integration.echo_model import expected
from tests.integration.load import leave_after, until_decoding

SIMPLE_PROMPT = "<|system|>\nBe brief.\n<|user|>\nWhat is AI?\n<|assistant|>\n"
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is AI?"}]},
]


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def lone_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master without nodes: enough for input checks, which come before dispatch."""
    group = ProcGroup(tmp_path_factory.mktemp("lone_master"))
    c = Cluster(group)
    try:
        c.start_master(
            "--max_new_tokens", "1000", "--max_body_bytes", "2048", "--served-model-name", "pd-sim"
        )
        yield c
    finally:
        group.stop_all()


def post(cluster: Cluster, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{cluster.url}{path}", json=body, timeout=30)


def stream(cluster: Cluster, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's JSON events; asserts OpenAI's framing and the final ``[DONE]``."""
    with httpx.stream("POST", f"{cluster.url}{path}", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = [b for b in raw.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), raw
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b[len("data: ") :]) for b in blocks[:-1]]


def aborts(cluster: Cluster, mode: str) -> int:
    return sum(n.stats()["aborts"] for n in cluster.nodes if n.mode == mode)


def wait_for_aborts(cluster: Cluster, prefill: int, decode: int) -> tuple[int, int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (aborts(cluster, "prefill"), aborts(cluster, "decode")) == (prefill, decode):
            break
        time.sleep(0.05)
    return aborts(cluster, "prefill"), aborts(cluster, "decode")


def test_completion_returns_the_exact_text_and_usage(
    shared_cluster: Cluster, tok: ModelTokenizer
) -> None:
    cluster = shared_cluster
    body = {"model": "model", "prompt": "What is AI?", "max_tokens": 12}
    r = post(cluster, "/v1/completions", body)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    assert (body["object"], body["model"]) == ("text_completion", "model")
    assert body["choices"] == [
        {"index": 0, "text": "What is AI?What is AI?", "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}

    prompt = "Tell me a joke about computers."
    text, count, _ = expected(tok, prompt, 40, ignore_eos=True)
    r = post(cluster, "/v1/completions", {"prompt": [prompt], "max_tokens": 40, "ignore_eos": True})
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (text, "length")
    assert r.json()["usage"]["completion_tokens"] == count == 40

    r = post(cluster, "/v1/completions", {"prompt": prompt, "temperature": 0, "seed": -1})
    assert r.json()["choices"][0]["text"] == expected(tok, prompt, 16)[0]  # default max_tokens
    models = httpx.get(f"{cluster.url}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["model"]


def test_completion_stream_sends_chunks_usage_and_done(
    shared_cluster: Cluster, tok: ModelTokenizer
) -> None:
    cluster = shared_cluster
    prompt = "Hello world!"
    body = {"prompt": prompt, "max_tokens": 10, "stream_options": {"include_usage": True}}
    events = stream(cluster, "/v1/completions", body)
    *chunks, usage = events
    text, count, reason = expected(tok, prompt, 10)
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        reason
    ]
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert len({c["id"] for c in events}) == 1
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": count,
        "total_tokens": 3 + count,
    }

    events = stream(cluster, "/v1/completions", {"prompt": prompt, "max_tokens": 3})
    assert "usage" not in events[-1] and events[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_are_left_out_of_the_text(cluster: Cluster) -> None:
    body = {"prompt": "What is AI?", "max_tokens": 12, "stop": " AI"}
    r = post(cluster, "/v1/completions", body)
    assert r.json()["choices"][0] | {"index": 0} == {
        "index": 0,
        "text": "What is",
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert r.json()["usage"]["completion_tokens"] == 3
    events = stream(cluster, "/v1/completions", {**body, "stop": ["?What", " AI"]})
    assert "".join(e["choices"][0]["text"] for e in events) == "What is"
    assert wait_for_aborts(cluster, 0, 0) == (0, 0)  # the nodes stopped by themselves

    # "s A" spans two tokens the node matches separately: the master cuts and aborts.
    r = post(cluster, "/v1/completions", {**body, "stop": ["s A"]})
    assert (r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]) == (
        "What i",
        "stop",
    )
    assert wait_for_aborts(cluster, 1, 1) == (1, 1)
    events = stream(cluster, "/v1/completions", {**body, "stop": ["s A"]})
    assert "".join(e["choices"][0]["text"] for e in events) == "What i"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert wait_for_aborts(cluster, 2, 2) == (2, 2)


def test_chat_with_the_simple_template(shared_cluster: Cluster, tok: ModelTokenizer) -> None:
    cluster = shared_cluster
    r = post(cluster, "/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["model"]) == ("chat.completion", "model")
    text, count, reason = expected(tok, SIMPLE_PROMPT, 20)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }
    ]
    prompt_tokens = tok.count(SIMPLE_PROMPT)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": count,
        "total_tokens": prompt_tokens + count,
    }

    # Without a limit the answer runs to the model's end of text (2 x the prompt).
    events = stream(cluster, "/v1/chat/completions", {"messages": CHAT, "temperature": 0.2})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert content == expected(tok, SIMPLE_PROMPT, 1000)[0]
    assert [e["choices"][0]["finish_reason"] for e in events][-2:] == [None, "stop"]


def test_stream_that_fails_after_its_first_chunk_ends_with_an_error_and_done(
    cluster: Cluster,
) -> None:
    body = {"prompt": "Hello world", "max_tokens": 300, "ignore_eos": True, "stream": True}

    decoding: list[int] = []

    async def one(client: httpx.AsyncClient, i: int) -> list[str]:
        raw = ""
        async with client.stream("POST", f"{cluster.url}/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_text():
                raw += chunk
                if raw.count("data:") >= 2 and i not in decoding:
                    decoding.append(i)
        return [b for b in raw.split("\n\n") if b.strip()]

    async def run() -> list[list[str]]:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(2)]
            await until_decoding(decoding, 2)  # both decoding, one on each decode node
            cluster.node("decode", 0).proc.kill()
            return await asyncio.gather(*tasks)

    failed = [blocks for blocks in asyncio.run(run()) if "error" in blocks[-2]]
    assert len(failed) == 1
    error = json.loads(failed[0][-2][len("data: ") :])["error"]
    assert (error["type"], error["param"]) == ("node_failed", None)
    assert failed[0][-1] == "data: [DONE]" and len(failed[0]) > 3


def test_client_disconnect_aborts_the_request_on_both_nodes(cluster: Cluster) -> None:
    body = {"messages": CHAT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    leave_after(f"{cluster.url}/v1/chat/completions", body, 5)
    assert wait_for_aborts(cluster, 1, 1) == (1, 1)
    assert [n.stats()["kv_used_tokens"] for n in cluster.nodes if n.mode == "decode"] == [0, 0]


def test_chat_uses_the_model_dirs_template(
    procs: ProcGroup, tmp_path: Path, tok: ModelTokenizer
) -> None:
    model_dir = tmp_path / "chat-model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% if messages[0]['role'] == 'assistant' %}"
        "{{ raise_exception('the first message must not be the assistant') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    c = Cluster(procs)
    c.start_master("--model_dir", str(model_dir))
    c.add_node("prefill", 0)
    c.add_node("decode", 0)
    c.wait_ready(1, 1)

    messages = [{"role": "user", "content": "What is AI?"}]
    r = post(c, "/v1/chat/completions", {"model": "chat-model", "messages": messages})
    prompt = "<|begin_of_text|><|im_start|>user\nWhat is AI?<|im_end|>\n<|im_start|>assistant\n"
    text, count, reason = expected(tok, prompt, 1000)
    assert r.json()["model"] == "chat-model"
    assert r.json()["choices"][0]["message"]["content"] == text
    assert r.json()["choices"][0]["finish_reason"] == reason == "stop"
    assert r.json()["usage"]["prompt_tokens"] == tok.count(prompt)

    r = post(c, "/v1/chat/completions", {"messages": [{"role": "assistant", "content": "Hi"}]})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message == "messages: the first message must not be the assistant"


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n"),
        ("/v1/chat/completions", {"messages": CHAT, "n": 2}, 400, "n"),
        ("/v1/chat/completions", {"model": "m"}, 422, "messages"),
        ("/v1/chat/completions", {"messages": []}, 422, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "bot", "content": "x"}]},
            422,
            "messages.0.role",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            422,
            "messages.0.content",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "tools": []}, 422, "tools"),
        ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}, 400, "logprobs"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "max_completion_tokens": 5000},
            400,
            "max_completion_tokens",
        ),
        ("/v1/completions", {"max_tokens": 4}, 422, "prompt"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
        ("/v1/completions", {"prompt": ""}, 400, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 422, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 5000}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "temperature": -1}, 422, "temperature"),
        ("/v1/completions", {"prompt": "hi", "stop": [""]}, 422, "stop"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 1}, 400, "logprobs"),
        ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    lone_master: Cluster, path: str, body: dict, status: int, field: str
) -> None:
    for stream_it in (False, True):
        r = post(lone_master, path, {**body, "stream": stream_it})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"type", "code", "message", "param"}
        assert error["message"].startswith(f"{field}: ") and error["param"] == field


def test_unparsable_oversized_and_unservable_requests(lone_master: Cluster) -> None:
    models = httpx.get(f"{lone_master.url}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["pd-sim"]
    url = f"{lone_master.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "x" * 4096}]}, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["param"] is None
    for stream_it in (False, True):
        r = httpx.post(url, json={"messages": CHAT, "stream": stream_it}, timeout=10)
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "no_node_available"


def test_a_model_this_master_does_not_serve_is_404_as_in_vllm(lone_master: Cluster) -> None:
    body = {"model": "gpt-4", "prompt": "hi", "max_tokens": 2}
    r = post(lone_master, "/v1/completions", body)
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "'gpt-4'" in error["message"] and "'pd-sim'" in error["message"]
    chat = {"model": "gpt-4", "messages": CHAT}
    assert post(lone_master, "/v1/chat/completions", chat).status_code == 404
    # the served name, the model directory (vLLM's default name; LightLLM's benchmark client
    # sends its --tokenizer_path) and no model at all reach dispatch: 503 with no node here
    for model in ("pd-sim", str(DEFAULT_MODEL_DIR), f"{DEFAULT_MODEL_DIR}/", None):
        named = {"prompt": "hi", "max_tokens": 2} | ({"model": model} if model else {})
        assert post(lone_master, "/v1/completions", named).status_code == 503, model
