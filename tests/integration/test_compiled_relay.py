"""The compiled relay of tokens to streams (``pdmaster._lane``) against the Python chain it
stands in for: two masters, one of each (``--python_relay``), each with its own simulated
prefill and decode node, take the same requests; clients must get the same bytes (OpenAI's
per-response id and time aside), the same metrics, and the same deadlines."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup, wait_until
from pdwire.extensions import optional_extension
from tests.integration.load import leave_after

PATHS = ("compiled", "python")
# steps of 20 ms, one stream at a time: every step is one hand-over on either path
SLOW_DECODE = ["--decode_base_ms", "20", "--decode_per_seq_us", "0"]


def start(group: ProcGroup, relay: str, *master_flags: str) -> Cluster:
    c = Cluster(group)
    c.start_master(*master_flags, *(["--python_relay"] if relay == "python" else []))
    c.add_node("prefill", 0)
    c.add_node("decode", 0, *SLOW_DECODE)
    c.wait_ready(1, 1)
    return c


@pytest.fixture(scope="module")
def masters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Cluster]]:
    group = ProcGroup(tmp_path_factory.mktemp("relay"))
    try:
        flags = ("--token_idle_timeout", "1")  # streams below run longer than this
        yield {relay: start(group, relay, *flags) for relay in PATHS}
    finally:
        group.stop_all()


def metrics(cluster: Cluster) -> dict[str, float]:
    text = httpx.get(f"{cluster.url}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def raw_stream(cluster: Cluster, path: str, body: dict[str, Any]) -> bytes:
    with httpx.stream("POST", f"{cluster.url}{path}", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        return b"".join(r.iter_raw())


def canonical(path: str, raw: bytes) -> Any:
    """What a client reads from a stream, the same on both paths: LightLLM's bytes (an event
    per token); OpenAI's text and every other chunk (its chunks are one per hand-over, so
    how tokens split between them depends on timing), without the per-response id and time.
    """
    if path == "/generate_stream":
        return raw
    text, others = [], []
    for event in raw.decode().split("\n\n"):
        if not event:
            continue
        assert event.startswith("data: "), event
        if event == "data: [DONE]":
            others.append(event)
            continue
        chunk = json.loads(event[len("data: ") :])
        chunk.pop("id"), chunk.pop("created")
        for choice in chunk["choices"]:
            if "delta" in choice:
                text.append(choice["delta"].pop("content", ""))
            else:
                text.append(choice.pop("text"))
            if choice["finish_reason"] is None and not choice.get("delta"):
                choice.clear()  # a text chunk: its text counted above
        others.append([c for c in chunk["choices"] if c] or chunk.get("usage"))
    return "".join(text), [o for o in others if o]


ODD_TEXT = 'Caf\u00e9 "quoted" back\\slash\nnew\tline \x01\x1f\x7f \u65e5\u672c \U0001f600 </end>'
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/generate_stream", {"inputs": "Hello world", "parameters": {"max_new_tokens": 60}}),
    (
        "/generate_stream",
        {
            "inputs": "The quick brown fox",
            "parameters": {"max_new_tokens": 40, "ignore_eos": True, "stop_sequences": ["dog"]},
        },
    ),
    (
        "/v1/completions",
        {
            "prompt": "Hello world",
            "max_tokens": 60,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (  # a stop string: the encoder completes the answer before the run ends
        "/v1/completions",
        {"prompt": "Hello world", "max_tokens": 60, "stream": True, "stop": ["d H"]},
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Say something long"}],
            "max_tokens": 50,
            "stream": True,
            "ignore_eos": True,
        },
    ),
    # the simulated model repeats the prompt: texts to escape, characters of 2 to 4 bytes
    # (some split between tokens, which then come out empty until the character is whole)
    ("/v1/completions", {"prompt": ODD_TEXT, "max_tokens": 80, "stream": True, "ignore_eos": True}),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": ODD_TEXT}],
            "max_tokens": 80,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        },
    ),
]


def test_the_install_built_it() -> None:
    assert optional_extension("pdmaster._lane") is not None


def test_clients_get_the_same_bytes_and_metrics_on_both_paths(
    masters: dict[str, Cluster],
) -> None:
    before = {relay: metrics(c) for relay, c in masters.items()}
    for path, body in REQUESTS:
        raw = {relay: raw_stream(c, path, body) for relay, c in masters.items()}
        assert raw["compiled"].count(b"data:") >= 3
        assert canonical(path, raw["compiled"]) == canonical(path, raw["python"]), path
    after = {relay: metrics(c) for relay, c in masters.items()}

    def grew(relay: str, sample: str) -> float:
        return after[relay].get(sample, 0.0) - before[relay].get(sample, 0.0)

    compiled = 'pd_stream_hand_overs_total{path="compiled"}'
    declined = 'pd_stream_hand_overs_total{path="python"}'
    assert grew("python", compiled) == 0 and grew("python", declined) == 0
    # the plain case is every token but a stream's last (its finish status); a stream whose
    # answer is complete before its run (a stop string) declines what comes until its task
    # ends the run, which on a loaded machine may be a step or two
    assert grew("compiled", compiled) >= 150
    assert grew("compiled", declined) <= 2 * len(REQUESTS)
    # a write per step on either path (a master that falls a step behind writes two in one:
    # one gap fewer), so about the same gaps, of about a step each
    itl = "pd_inter_token_latency_seconds"
    gaps = {relay: grew(relay, f"{itl}_count") for relay in PATHS}
    assert gaps["compiled"] == pytest.approx(gaps["python"], rel=0.05) and gaps["python"] > 150
    for relay in PATHS:
        assert grew(relay, f'{itl}_bucket{{le="+Inf"}}') == gaps[relay]
        assert 0.01 < grew(relay, f"{itl}_sum") / gaps[relay] < 0.5, relay  # steps of 20 ms
    requests = [k for k in after["compiled"] if k.startswith("pd_requests_total")]
    assert requests
    for sample in requests:
        assert grew("compiled", sample) == grew("python", sample), sample


def test_a_stream_longer_than_the_idle_timeout_runs_to_its_end(
    masters: dict[str, Cluster],
) -> None:
    """Each relayed chunk moves the wait's deadline (1 s here; the stream takes ~2 s)."""
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 100, "ignore_eos": True}}
    for c in masters.values():
        raw = raw_stream(c, "/generate_stream", body)
        assert raw.count(b"data:") == 100 and b'"finish_reason":"length"' in raw


def test_the_request_deadline_ends_a_stream_the_same_way(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Tokens after the deadline are not relayed; the stream ends with the deadline's error
    (from the sweep or from the stream's task, whichever comes first, on either path)."""
    group = ProcGroup(tmp_path_factory.mktemp("deadline"))
    try:
        clusters = {relay: start(group, relay, "--request_timeout", "1") for relay in PATHS}
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 200, "ignore_eos": True}}
        for relay, c in clusters.items():
            raw = raw_stream(c, "/generate_stream", body)
            events = [json.loads(e[len(b"data:") :]) for e in raw.split(b"\n\n") if e]
            assert 20 < len(events) < 100, relay  # ~50 steps of 20 ms in the second
            assert all("token" in e for e in events[:-1])
            error = events[-1]["error"]
            assert error["type"] == "deadline_exceeded", relay
            if error["code"] == "token_timeout":  # the sweep: the wait ended at the deadline
                assert re.fullmatch(r"no token within 0\.\d s", error["message"]), relay
            else:
                assert error == {
                    "type": "deadline_exceeded",
                    "code": "request_timeout",
                    "message": "request deadline passed",
                }
    finally:
        group.stop_all()


def test_a_client_that_leaves_mid_stream_ends_its_run_the_same_way(
    masters: dict[str, Cluster],
) -> None:
    """Disconnect detection: a client that closes its connection after a few events of a
    long stream has its request aborted on both nodes and counted as ``client_closed``, on
    either path, and neither master logs an error for it."""
    bodies = {
        "/generate_stream": {
            "inputs": "Hello",
            "parameters": {"max_new_tokens": 300, "ignore_eos": True},
        },
        "/v1/completions": {
            "prompt": "Hello",
            "max_tokens": 300,
            "stream": True,
            "ignore_eos": True,
        },
    }
    for relay, c in masters.items():
        for path, body in bodies.items():
            aborts = [n.stats()["aborts"] for n in c.nodes]
            before = metrics(c)
            leave_after(f"{c.url}{path}", body, 8, timeout=60)

            def aborted(c: Cluster = c, aborts: list[int] = aborts) -> bool:
                return [n.stats()["aborts"] for n in c.nodes] == [a + 1 for a in aborts]

            wait_until(aborted, 30, f"{relay} {path}: the ABORTs of a client that left")
            after = metrics(c)
            closed = [k for k in after if k.startswith("pd_requests_total{") and "closed" in k]
            assert sum(after[k] - before.get(k, 0.0) for k in closed) == 1, (relay, path)
    for c in masters.values():
        assert c.master is not None
        assert "Traceback" not in c.master.log() and "ERROR" not in c.master.log()


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP/1.1 response read to its end: its head and its chunked body, unframed."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, data
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            more = sock.recv(65536)
            assert more, "the body ended early"
            rest += more
        if size == 0:
            return head, body
        body, rest = body + rest[:size], rest[size + 2 :]


def late_stream(cluster: Cluster, body: dict[str, Any], until: Callable[[], bool]) -> bytes:
    """A /generate_stream answer read by a client that reads nothing until ``until()``."""
    raw = json.dumps(body).encode()
    host, port = cluster.url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(60)
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /generate_stream HTTP/1.1\r\nhost: %b\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (host.encode(), len(raw), raw)
        )
        deadline = time.monotonic() + 60
        while not until():
            assert time.monotonic() < deadline, "the master's writes never backed up"
            time.sleep(0.5)
        head, events = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    return events


def test_a_client_that_stops_reading_gets_the_same_bytes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Back-pressure: while a client reads nothing, the master's writes fill the kernel's
    buffers (~4 MB on loopback) and its transport pauses; tokens then take the Python chain's
    way (a write left to a task, the rest queued for the stream's task), which the client
    waits to see. It gets every byte, in order, as a client reading at once from a master
    without the compiled relay."""
    tokens = 24_000  # ~4.6 MB of events; the simulated node makes ~1,500 a second
    group = ProcGroup(tmp_path_factory.mktemp("paused"))
    try:
        clusters = {}
        for relay in PATHS:
            c = Cluster(group)
            long = ["--max_new_tokens", str(tokens), "--max_req_total_len", str(2 * tokens)]
            c.start_master(*long, *(["--python_relay"] if relay == "python" else []))
            c.add_node("prefill", 0)
            c.add_node("decode", 0, "--decode_base_ms", "0", "--decode_per_seq_us", "0")
            c.wait_ready(1, 1)
            clusters[relay] = c
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": tokens, "ignore_eos": True}}
        declined = 'pd_stream_hand_overs_total{path="python"}'
        before = metrics(clusters["compiled"]).get(declined, 0.0)

        def paused() -> bool:  # tokens left to the Python chain while the stream runs
            return metrics(clusters["compiled"]).get(declined, 0.0) - before >= 2

        with ThreadPoolExecutor(2) as pool:
            late = pool.submit(late_stream, clusters["compiled"], body, paused)
            reference = raw_stream(clusters["python"], "/generate_stream", body)
            got = late.result()
        assert got.count(b"data:") == tokens
        assert got == reference
    finally:
        group.stop_all()
