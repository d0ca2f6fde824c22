"""Anthropic's Messages API, OpenAI's Responses API and LightLLM's info endpoints end to end,
through the official ``anthropic`` and ``openai`` SDKs: a real master with simulated nodes.

The simulated model repeats the prompt's tokens and then ends (``echo_model``), so every
answer's text and token counts are known in advance.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from pdlocal.cluster import Cluster, ProcGroup
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from tests.integration.conftest import one_by_one
from tests.integration.echo_model import expected
from tests.integration.load import leave_after

BRIEF = [{"role": "user", "content": "What is AI?"}]
LONG = [{"role": "user", "content": "Hello world " * 200}]
BRIEF_PROMPT = "<|system|>\nBe brief.\n<|user|>\nWhat is AI?\n<|assistant|>\n"


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def pd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One master (at most 2 requests at once, no queue) with a prefill and a decode node.

    The module's last test kills the decode node.
    """
    group = ProcGroup(tmp_path_factory.mktemp("client_apis"))
    try:  # a start that fails or is interrupted stops what it started too
        yield one_by_one(
            group,
            "--max_inflight",
            "2",
            "--max_queue",
            "0",
            "--max_new_tokens",
            "1000",
            "--served-model-name",
            "pd-sim",
            "--admin-token",
            "s3cret",
        )
    finally:
        group.stop_all()


def claude(c: Cluster) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=c.url, api_key="unused", max_retries=0, timeout=30)


def gpt(c: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_messages_answer_with_the_exact_text_stop_reason_and_usage(
    pd: Cluster, tok: ModelTokenizer
) -> None:
    client = claude(pd)
    message = client.messages.create(
        model="pd-sim",
        max_tokens=12,
        system="Be brief.",
        messages=BRIEF,
        extra_body={"temperature": 0},
    )
    text, count, _ = expected(tok, BRIEF_PROMPT, 12)
    assert message.id.startswith("msg_") and (message.role, message.model) == (
        "assistant",
        "pd-sim",
    )
    assert [(b.type, b.text) for b in message.content] == [("text", text)]
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    prompt_tokens = tok.count(BRIEF_PROMPT)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt_tokens, count)

    message = client.messages.create(
        model="pd-sim",
        max_tokens=200,
        messages=[{"role": "user", "content": "Hi!"}],
        extra_body={"top_k": 5, "top_p": 0.9},
        metadata={"user_id": "u1"},
    )
    text, count, reason = expected(tok, "<|user|>\nHi!\n<|assistant|>\n", 200)
    assert reason == "stop" and message.content[0].text == text
    assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", count)

    counted = client.messages.count_tokens(model="pd-sim", system="Be brief.", messages=BRIEF)
    assert counted.input_tokens == prompt_tokens


def test_messages_stream_sends_anthropics_event_sequence(pd: Cluster, tok: ModelTokenizer) -> None:
    content = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    prompt = "<|user|>\nHello\nthere\n<|assistant|>\n"
    with claude(pd).messages.stream(
        model="pd-sim", max_tokens=15, messages=[{"role": "user", "content": content}]
    ) as stream:
        kinds = [event.type for event in stream if event.type != "text"]
        final = stream.get_final_message()
    deltas = kinds.count("content_block_delta")
    assert deltas >= 2
    assert kinds == (
        ["message_start", "content_block_start"]
        + ["content_block_delta"] * deltas
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    text, count, _ = expected(tok, prompt, 15)
    assert final.content[0].text == text and final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (tok.count(prompt), count)


def test_stop_sequences_end_the_message_without_their_text(
    pd: Cluster, tok: ModelTokenizer
) -> None:
    prompt = "<|user|>\nHello world\n<|assistant|>\n"
    full, _, _ = expected(tok, prompt, 40)
    before = full[: full.index("world")]
    client = claude(pd)
    ask = {
        "model": "pd-sim",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "Hello world"}],
    }
    message = client.messages.create(**ask, stop_sequences=["nowhere", "world"])
    assert message.content[0].text == before
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "world")
    ids = tok.encode(prompt)  # the answer repeats them: it ends with the one holding "world"
    produced = next(n for n in range(len(ids)) if "world" in tok.decode(ids[:n]))
    assert message.usage.output_tokens == produced
    with client.messages.stream(**ask, stop_sequences=["world"]) as stream:
        assert "".join(stream.text_stream) == before
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "world")


def test_assistant_prefill_is_continued(pd: Cluster, tok: ModelTokenizer) -> None:
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure:"}]
    message = claude(pd).messages.create(model="pd-sim", max_tokens=6, messages=turns)
    assert message.content[0].text == expected(tok, "<|user|>\nHi\n<|assistant|>\nSure:", 6)[0]


def test_responses_answer_with_the_exact_text_and_usage(pd: Cluster, tok: ModelTokenizer) -> None:
    client = gpt(pd)
    response = client.responses.create(
        model="pd-sim", input="What is AI?", instructions="Be brief.", max_output_tokens=10
    )
    text, count, _ = expected(tok, BRIEF_PROMPT, 10)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.output_text == text
    assert (response.status, response.incomplete_details.reason) == (
        "incomplete",
        "max_output_tokens",
    )
    usage = response.usage
    prompt_tokens = tok.count(BRIEF_PROMPT)
    assert (usage.input_tokens, usage.output_tokens) == (prompt_tokens, count)
    assert usage.total_tokens == prompt_tokens + count
    assert (response.instructions, response.max_output_tokens, response.store) == (
        "Be brief.",
        10,
        False,
    )

    items = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi!"}]},
    ]
    response = client.responses.create(model="pd-sim", input=items, metadata={"k": "v"})
    text, count, reason = expected(
        tok, "<|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n", 500
    )
    assert reason == "stop" and response.output_text == text
    assert (response.status, response.incomplete_details, response.metadata) == (
        "completed",
        None,
        {"k": "v"},
    )
    assert response.usage.output_tokens == count


def test_responses_stream_sends_the_event_sequence(pd: Cluster, tok: ModelTokenizer) -> None:
    events = list(gpt(pd).responses.create(model="pd-sim", input="Hi!", stream=True))
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 2
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text, count, _ = expected(tok, "<|user|>\nHi!\n<|assistant|>\n", 500)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    done = events[-1].response
    assert (done.status, done.output_text, done.usage.output_tokens) == ("completed", text, count)
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


def test_sdk_errors_raise_the_right_exceptions(pd: Cluster) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(pd).messages.create(
            model="pd-sim", max_tokens=5, messages=[{"role": "user", "content": [image]}]
        )
    assert bad.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0.content.0.type: 'image' blocks are not supported; "
            "only 'text' blocks",
        },
    }
    with pytest.raises(openai.BadRequestError) as refused:
        gpt(pd).responses.create(model="pd-sim", input="x", previous_response_id="resp_1")
    assert refused.value.param == "previous_response_id"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude(pd).messages.create(model="claude-x", max_tokens=5, messages=BRIEF)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        gpt(pd).responses.create(model="gpt-x", input="x")


def test_overload_is_a_429_with_retry_after(pd: Cluster) -> None:
    """Long streams fill the master's two slots; the next request is refused at once."""
    ask = {"model": "pd-sim", "max_tokens": 1000, "stream": True, "messages": LONG}
    with httpx.Client(base_url=pd.url, timeout=30) as client:
        held: list[tuple[httpx.Response, Iterator[bytes]]] = []
        try:
            for _ in range(5):  # bounded: a refusal below may only be a slot freed late
                if len(held) == 2:
                    break
                r = client.send(client.build_request("POST", "/v1/messages", json=ask), stream=True)
                if r.status_code == 429:  # a slot the previous test used, freed a moment late
                    r.close()
                    continue
                chunks = r.iter_bytes()  # kept: a dropped iterator closes the response
                next(chunks)  # admitted and streaming
                held.append((r, chunks))
            with pytest.raises(anthropic.RateLimitError) as refused:
                claude(pd).messages.create(model="pd-sim", max_tokens=5, messages=BRIEF)
        finally:
            for r, _ in held:
                r.close()
    assert refused.value.response.headers["retry-after"].isdigit()
    assert refused.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_client_disconnect_aborts_on_both_nodes_and_metrics_name_the_endpoint(
    pd: Cluster,
) -> None:
    def aborts() -> tuple[int, int]:
        return tuple(n.stats()["aborts"] for n in pd.nodes)  # type: ignore[return-value]

    before = aborts()
    message = {"model": "pd-sim", "max_tokens": 1000, "stream": True, "messages": LONG}
    response = {"input": LONG, "stream": True}
    for path, body in (("/v1/messages", message), ("/v1/responses", response)):
        leave_after(f"{pd.url}{path}", body, 8)
    deadline = time.monotonic() + 5
    while aborts() != (before[0] + 2, before[1] + 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aborts() == (before[0] + 2, before[1] + 2)
    metrics = httpx.get(f"{pd.url}/metrics", timeout=5).text
    for endpoint in ("messages", "responses"):
        assert f'pd_requests_total{{endpoint="{endpoint}",status="200"}}' in metrics
        assert f'pd_requests_total{{endpoint="{endpoint}",status="client_closed"}}' in metrics


BAD_INPUTS = [
    ("/v1/messages", {"messages": BRIEF}, "max_tokens"),
    ("/v1/messages", {"max_tokens": 5, "messages": []}, "messages"),
    ("/v1/messages", {"max_tokens": 5, "messages": BRIEF, "temperature": 1.5}, "temperature"),
    ("/v1/messages", {"max_tokens": 5, "messages": BRIEF, "tools": [{"name": "t"}]}, "tools"),
    ("/v1/messages", {"max_tokens": 5, "messages": BRIEF, "mcp_servers": []}, "mcp_servers"),
    ("/v1/messages", {"max_tokens": 5000, "messages": BRIEF}, "max_tokens"),
    (
        "/v1/messages",
        {"max_tokens": 5, "messages": BRIEF, "thinking": {"type": "enabled", "budget_tokens": 9}},
        "thinking",
    ),
    (
        "/v1/messages",
        {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
        "messages.0.content.0.type",
    ),
    (
        "/v1/messages",
        {"max_tokens": 5, "messages": BRIEF, "system": [{"type": "tool_result"}]},
        "system.0.type",
    ),
    ("/v1/messages/count_tokens", {"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ("/v1/responses", {"input": "x", "tools": [{"type": "function"}]}, "tools"),
    ("/v1/responses", {"input": "x", "max_output_tokens": 5000}, "max_output_tokens"),
    ("/v1/responses", {"input": "x", "text": {"format": {"type": "json_object"}}}, "text.format"),
    ("/v1/responses", {"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
    ("/v1/responses", {"input": [{"type": "function_call_output"}]}, "input.0.type"),
    (
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input.0.content.0.type",
    ),
    ("/v1/responses", {"input": "x", "temperature": -1}, "temperature"),
    ("/v1/responses", {"inputs": "x"}, "input"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_INPUTS)
def test_bad_input_is_a_400_naming_the_field(
    pd: Cluster, path: str, body: dict[str, Any], field: str
) -> None:
    body = {"model": "pd-sim", **body}
    for stream_it in (False, True):
        r = httpx.post(f"{pd.url}{path}", json={**body, "stream": stream_it}, timeout=10)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["message"].startswith(f"{field}: ") or error["message"].startswith(
            f"{field}."
        ), error
        if path.startswith("/v1/messages"):
            assert (r.json()["type"], error["type"]) == ("error", "invalid_request_error")
        else:
            assert error["type"] == "invalid_request_error"
        if path.endswith("count_tokens"):
            break


def test_lightllm_info_endpoints(pd: Cluster, tok: ModelTokenizer) -> None:
    for method in ("GET", "POST"):
        r = httpx.request(method, f"{pd.url}/tokens", json={"text": BRIEF_PROMPT}, timeout=5)
        assert r.json() == {"ntokens": tok.count(BRIEF_PROMPT)}
        assert httpx.request(method, f"{pd.url}/get_model_name", timeout=5).json() == {
            "model_name": "pd-sim"
        }
    r = httpx.post(f"{pd.url}/tokens", json={"txt": "x"}, timeout=5)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("text: ")
    info = httpx.get(f"{pd.url}/get_server_info", timeout=5)
    assert info.json()["max_req_total_len"] == 24576 and info.json()["model_name"] == "pd-sim"
    assert "s3cret" not in info.text and "admin_token" not in info.json()
    models = httpx.get(f"{pd.url}/v1/models", timeout=5).json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [("pd-sim", 24576)]


def test_zz_a_node_killed_mid_stream_ends_the_message_with_an_error_event(pd: Cluster) -> None:
    """Last in the module: it kills the decode node, and then no request can be served."""
    decode = pd.node("decode")
    crash_at = decode.stats()["tokens"] + 20
    httpx.put(f"{decode.url}/sim/faults", json={"crash_after_tokens": crash_at}, timeout=5)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        with claude(pd).messages.stream(
            model="pd-sim",
            max_tokens=500,
            messages=[{"role": "user", "content": "Hello world " * 20}],
        ) as stream:
            for event in stream:
                seen.append(event.type)
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "node" in failed.value.body["error"]["message"]  # type: ignore[index]
    assert seen[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert "message_stop" not in seen

    with pytest.raises(anthropic.APIStatusError) as unavailable:  # no decode node is left
        claude(pd).messages.create(model="pd-sim", max_tokens=5, messages=BRIEF)
    assert unavailable.value.status_code == 503
    assert unavailable.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as no_node:
        gpt(pd).responses.create(model="pd-sim", input="x", stream=True)
    assert no_node.value.status_code == 503
