"""Request parameters end to end: what a client sets reaches both nodes' SamplingParams exactly
(read back from the simulated nodes' /sim/stats), and what cannot is a 4xx naming the field,
on LightLLM's API and OpenAI's."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup
from tests.integration.conftest import one_by_one


def f32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One master (LightLLM v1.1.0 nodes) with one prefill and one decode node."""
    group = ProcGroup(tmp_path_factory.mktemp("params_pair"))
    try:
        yield one_by_one(group, "--max_new_tokens", "1000")
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def lone_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """No nodes: parameters are checked before dispatch. It accepts only the releases whose
    requests have no seed and no banned-token list, so those are refused up front too (a
    master that also accepts v1.2.0 nodes can carry them, and checks at pairing)."""
    group = ProcGroup(tmp_path_factory.mktemp("params_lone"))
    c = Cluster(group)
    try:
        c.start_master("--max_new_tokens", "1000", "--lightllm_version", "v1.1.0,fc72ffa")
        yield c
    finally:
        group.stop_all()


def received(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SamplingParams of the last REQ each node got: (prefill's, decode's)."""
    return (
        cluster.node("prefill").stats()["last_sampling_params"],
        cluster.node("decode").stats()["last_sampling_params"],
    )


LIGHTLLM_PARAMETERS: dict[str, Any] = {
    "max_new_tokens": 6,
    "min_new_tokens": 3,
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 2**31 - 1,
    "presence_penalty": 0.25,
    "frequency_penalty": 3e38,
    "repetition_penalty": 1.1,
    "ignore_eos": True,
    "input_penalty": True,
    "image_max_patch_num": 12,
    "exponential_decay_length_penalty": [5, 1.25],
    "regular_constraint": r"(yes|no) \d{1,3}",
    "skip_special_tokens": False,
    "add_special_tokens": False,
    "add_spaces_between_special_tokens": False,
    "print_eos_token": True,
    "stop_sequences": ["zz"],
}


def assert_carried(got: dict[str, Any], sent: dict[str, Any]) -> None:
    for name, value in sent.items():
        if name in ("max_new_tokens", "min_new_tokens", "stop_sequences"):
            continue
        want: Any = f32(value) if isinstance(value, float) else value
        if name == "exponential_decay_length_penalty":
            want = [value[0], f32(value[1])]
        assert got[name] == want, name


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
def test_every_lightllm_parameter_reaches_both_nodes_as_sent(pair: Cluster, path: str) -> None:
    body = {"inputs": "What is AI?", "parameters": LIGHTLLM_PARAMETERS}
    r = httpx.post(f"{pair.url}{path}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    prefill, decode = received(pair)
    for got in (prefill, decode):
        assert_carried(got, LIGHTLLM_PARAMETERS)
        assert got["stop_sequences"] and got["group_request_id"] == prefill["group_request_id"]
    assert (prefill["max_new_tokens"], prefill["min_new_tokens"]) == (1, 1)
    assert (decode["max_new_tokens"], decode["min_new_tokens"]) == (5, 3)

    for constraint in (
        {"guided_json": '{"type": "object", "properties": {"a": {"type": "integer"}}}'},
        {"guided_grammar": 'root ::= "yes" | "no"'},
        {"allowed_token_ids": [404, 314, 0]},
    ):
        body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 4, **constraint}}
        assert httpx.post(f"{pair.url}{path}", json=body, timeout=30).status_code == 200
        for got in received(pair):
            assert {k: got[k] for k in constraint} == constraint


def test_greedy_reaches_the_nodes_as_lightllm_sends_it(pair: Cluster) -> None:
    body = {"inputs": "What is AI?", "parameters": {"temperature": 0.5, "top_k": 9}}
    assert httpx.post(f"{pair.url}/generate", json=body, timeout=30).status_code == 200
    for got in received(pair):
        assert (got["do_sample"], got["temperature"], got["top_p"], got["top_k"]) == (
            False,
            1.0,
            1.0,
            1,
        )


def test_openai_parameters_reach_both_nodes_as_sent(pair: Cluster) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {
        "messages": [{"role": "user", "content": "What is AI?"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "top_p": 0.75,
        "top_k": 40,
        "presence_penalty": 0.5,
        "frequency_penalty": 1.5,
        "repetition_penalty": 1.2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    r = httpx.post(f"{pair.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    for got in received(pair):
        assert json.loads(got["guided_json"]) == schema
        assert (got["do_sample"], got["temperature"], got["top_p"], got["top_k"]) == (
            True,
            0.5,
            0.75,
            40,
        )
        assert (got["presence_penalty"], got["frequency_penalty"]) == (0.5, 1.5)
        assert got["repetition_penalty"] == f32(1.2)

    body = {"prompt": "hi", "max_tokens": 3, "response_format": {"type": "json_object"}}
    with httpx.stream("POST", f"{pair.url}/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.read().decode().endswith("data: [DONE]\n\n")
    for got in received(pair):
        assert (got["guided_grammar"], got["guided_json"]) == ("json", "")


@pytest.mark.parametrize(
    ("parameters", "status", "field"),
    [
        ({"top_k": 2**32 + 5}, 422, "top_k"),
        ({"top_k": 2**31}, 422, "top_k"),
        ({"do_sample": True, "temperature": 1e-320}, 422, "temperature"),
        ({"do_sample": True, "temperature": 1e308}, 422, "temperature"),
        ({"presence_penalty": 1e39}, 422, "presence_penalty"),
        ({"frequency_penalty": 1e39}, 422, "frequency_penalty"),
        ({"repetition_penalty": 1e39}, 422, "repetition_penalty"),
        ({"repetition_penalty": 0.5}, 422, "repetition_penalty"),
        ({"max_new_tokens": 2**31}, 422, "max_new_tokens"),
        ({"max_new_tokens": 4, "min_new_tokens": 5}, 422, "min_new_tokens"),
        ({"exponential_decay_length_penalty": [1, 0.5]}, 422, "exponential_decay_length_penalty.1"),
        ({"regular_constraint": "(unclosed"}, 422, "regular_constraint"),
        ({"guided_json": "not json"}, 422, "guided_json"),
        ({"regular_constraint": "a", "allowed_token_ids": [1]}, 422, "allowed_token_ids"),
        ({"group_request_id": 5}, 422, "group_request_id"),
        ({"allowed_token_ids": [673]}, 400, "allowed_token_ids"),
        # v1.1.0 nodes' requests have no seed and no banned-token list
        ({"seed": 42}, 400, "seed"),
        ({"logit_bias": {"5": -100}}, 400, "logit_bias"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
def test_lightllm_api_refuses_what_cannot_be_carried(
    lone_master: Cluster, path: str, parameters: dict[str, Any], status: int, field: str
) -> None:
    body = {"inputs": "hi", "parameters": parameters}
    r = httpx.post(f"{lone_master.url}{path}", json=body, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"].startswith(f"parameters.{field}: "), r.text


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"top_k": 2**31}, 422, "top_k"),
        ({"temperature": 1e-320}, 422, "temperature"),
        ({"temperature": 1e308}, 422, "temperature"),
        ({"top_p": 1e-300}, 422, "top_p"),
        ({"presence_penalty": -1.0}, 400, "presence_penalty"),
        ({"repetition_penalty": 0.5}, 400, "repetition_penalty"),
        ({"repetition_penalty": 1e39}, 422, "repetition_penalty"),
        ({"max_tokens": 2**31}, 400, "max_tokens"),
        ({"logit_bias": {"5": 10}}, 400, "logit_bias"),
        ({"logit_bias": {"5": -100}}, 400, "logit_bias"),
        ({"seed": 7}, 400, "seed"),
        ({"response_format": {"type": "json_schema"}}, 400, "response_format.json_schema.schema"),
        ({"response_format": {"type": "yaml"}}, 422, "response_format.type"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_api_refuses_what_cannot_be_carried(
    lone_master: Cluster, fields: dict[str, Any], status: int, field: str, stream: bool
) -> None:
    body = {"prompt": "hi", "stream": stream, **fields}
    r = httpx.post(f"{lone_master.url}/v1/completions", json=body, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"].startswith(f"{field}: ") and error["param"] == field, r.text
