"""Bad client input and hostile nodes against a real master process."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pdlocal.cluster import Cluster, ProcGroup, wait_until


@pytest.fixture(scope="module")
def lone_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One master without nodes for the module: a test that lets a node in (or tries to)
    leaves none behind, which the next one checks."""
    group = ProcGroup(tmp_path_factory.mktemp("lone_master"))
    c = Cluster(group)
    try:
        c.start_master("--max_new_tokens", "1000", "--max_body_bytes", "2048")
        yield c
    finally:
        group.stop_all()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"parameters": {"max_new_tokens": 4}}, 422, "inputs"),
        ({"inputs": 42}, 422, "inputs"),
        (
            {"inputs": "hi", "parameters": {"max_new_tokens": "many"}},
            422,
            "parameters.max_new_tokens",
        ),
        ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, 422, "parameters.max_new_tokens"),
        (
            {"inputs": "hi", "parameters": {"max_new_tokens": 5000}},
            400,
            "parameters.max_new_tokens",
        ),
        ({"inputs": "hi", "parameters": {"temperature": -1}}, 422, "parameters.temperature"),
        ({"inputs": "hi", "parameters": {"bogus": 1}}, 422, "parameters.bogus"),
        ({"inputs": "hi", "surprise": True}, 422, "surprise"),
        ({"inputs": ""}, 400, "inputs"),
        ({"inputs": "hi", "parameters": {"n": 2}}, 422, "parameters.n"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
def test_bad_input_is_a_4xx_naming_the_field(
    lone_master: Cluster, path: str, body: dict, status: int, field: str
) -> None:
    r = httpx.post(f"{lone_master.url}{path}", json=body, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"type", "code", "message"}
    assert error["message"].startswith(field)


def test_non_json_and_oversized_bodies(lone_master: Cluster) -> None:
    r = httpx.post(f"{lone_master.url}/generate", content=b"{not json", timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    big = json.dumps({"inputs": "x" * 4096}).encode()
    r = httpx.post(f"{lone_master.url}/generate", content=big, timeout=10)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert httpx.get(f"{lone_master.url}/health", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
def test_a_body_sent_in_chunks_is_read_whole_and_refused_past_the_limit(
    lone_master: Cluster, path: str
) -> None:
    def chunks(body: bytes, size: int) -> Iterator[bytes]:  # no content-length: chunked
        for start in range(0, len(body), size):
            yield body[start : start + size]

    url = f"{lone_master.url}{path}"
    whole = json.dumps({"inputs": "What is AI?", "parameters": {"max_new_tokens": 4}}).encode()
    r = httpx.post(url, content=chunks(whole, 7), timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "no_prefill_node")  # read, no node
    big = json.dumps({"inputs": "x" * 4096}).encode()
    r = httpx.post(url, content=chunks(big, 512), timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "request body exceeds the limit of 2048 bytes"
    r = httpx.post(url, content=big, timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == f"request body is {len(big)} bytes; the limit is 2048"


def test_unknown_routes_methods_and_raw_bytes_get_our_error_body(lone_master: Cluster) -> None:
    r = httpx.get(f"{lone_master.url}/no/such/route", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"] == {
        "type": "not_found",
        "code": "no_route",
        "message": "no route GET /no/such/route",
    }
    r = httpx.get(f"{lone_master.url}/generate", timeout=10)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert "GET /generate" in r.json()["error"]["message"]
    for path in ("/generate_stream", "/v1/completions", "/v1/chat/completions"):  # the hot path
        r = httpx.get(f"{lone_master.url}{path}", timeout=10)
        assert (r.status_code, r.headers["allow"]) == (405, "POST"), path
        assert r.json()["error"]["message"] == f"method not allowed: GET {path} (allowed: POST)"
    for path in ("/generate", "/generate_stream", "/v1/completions"):
        r = httpx.post(f"{lone_master.url}{path}", content=b'{"inputs": "\xff"}', timeout=10)
        assert r.status_code == 400, path
        message = r.json()["error"]["message"]
        assert message == "request body is not valid JSON: byte 12 (0xff) is not UTF-8", path


def test_no_node_connected_is_503(lone_master: Cluster) -> None:
    r = httpx.post(f"{lone_master.url}/generate", json={"inputs": "hi"}, timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "no prefill node is connected to this master"
    assert httpx.get(f"{lone_master.url}/readiness", timeout=5).status_code == 503


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_closes_the_node_socket(lone_master: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    registration = {
        "node_id": 7,
        "client_ip_port": "127.0.0.9:8019",
        "mode": "prefill",
        "start_args": {"pd_node_id": 7, "host": "127.0.0.9"},
    }

    def prefill_nodes() -> int:
        return int(httpx.get(f"{lone_master.url}/readiness", timeout=5).json()["prefill_nodes"])

    async def attack() -> int | None:
        url = f"ws://127.0.0.1:{lone_master.master_port}/pd_register"
        async with connect(url) as ws:
            await ws.send(json.dumps(registration))
            await asyncio.to_thread(wait_until, lambda: prefill_nodes() == 1, 10, "registration")
            await ws.send(pickle.dumps(_Evil(marker), protocol=4))
            try:
                async with asyncio.timeout(5):
                    await ws.recv()
            except ConnectionClosed:
                pass
            return ws.close_code

    assert asyncio.run(attack()) == 1008
    assert not marker.exists()
    wait_until(lambda: prefill_nodes() == 0, 10, "the node to be dropped")


@pytest.mark.parametrize(
    "registration",
    [
        "not json",
        json.dumps({"node_id": 1, "client_ip_port": "x", "mode": "router", "start_args": {}}),
        json.dumps(
            {
                "node_id": 1,
                "client_ip_port": "x",
                "mode": "decode",
                "start_args": {"host": "127.0.0.9", "pd_node_id": 1},
            }
        ),  # no rpyc port
        json.dumps(
            {
                "node_id": 1,
                "client_ip_port": "x",
                "mode": "prefill",
                "start_args": {"host": "node-a", "pd_node_id": 1},
            }
        ),  # not an IPv4
    ],
)
def test_malformed_registration_is_refused(lone_master: Cluster, registration: str) -> None:
    async def register() -> int | None:
        async with connect(f"ws://127.0.0.1:{lone_master.master_port}/pd_register") as ws:
            await ws.send(registration)
            try:
                async with asyncio.timeout(5):
                    await ws.recv()
            except ConnectionClosed:
                pass
            return ws.close_code

    assert asyncio.run(register()) == 1008
    ready = httpx.get(f"{lone_master.url}/readiness", timeout=5).json()
    assert (ready["prefill_nodes"], ready["decode_nodes"]) == (0, 0)


def test_fc72ffa_nodes_work_with_a_fc72ffa_master(procs: ProcGroup) -> None:
    c = Cluster(procs)
    c.start_master("--lightllm_version", "fc72ffa")
    c.add_node("prefill", 0, "--lightllm_version", "fc72ffa")
    c.add_node("decode", 0, "--lightllm_version", "fc72ffa")
    c.wait_ready(1, 1)
    body = {
        "inputs": "What is AI?",
        "parameters": {"max_new_tokens": 12, "stop_sequences": [" AI"]},
    }
    r = httpx.post(f"{c.url}/generate", json=body, timeout=30)
    assert r.json()["generated_text"] == ["What is AI"]
