"""Faults of LightLLM v1.2.0 nodes through real processes, each ending every request with
tokens or a clean error within its deadline (retried on another pair before the first token).

The last test prints the fault table (fault, sent, succeeded, failed with a clean error, hung).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from tests.integration.echo_model import expected
from tests.integration.load import (
    Outcome,
    Tally,
    print_fault_table,
    run_load,
    stream_one,
    until_decoding,
)

TALLIES: list[Tally] = []
V12 = ["--lightllm_version", "v1.2.0", "--pd_heartbeat_s", "0.2"]
FAST = [
    "--first_token_timeout", "1.5", "--kv_move_timeout", "1", "--prompt_ids_timeout", "1",
    "--token_idle_timeout", "3", "--heartbeat_timeout", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


def start(procs: ProcGroup, prefill: list[list[str]], decode: list[list[str]]) -> Cluster:
    c = Cluster(procs)
    c.start_master(*FAST)
    for i, extra in enumerate(prefill):
        c.add_node("prefill", i, *V12, *extra)
    for i, extra in enumerate(decode):
        c.add_node("decode", i, *V12, *extra)
    c.wait_ready(len(prefill), len(decode))
    return c


def record(fault: str, outcomes: list[Outcome]) -> Tally:
    tally = Tally(fault, outcomes)
    TALLIES.append(tally)
    return tally


def retries(c: Cluster) -> float:
    lines = httpx.get(f"{c.url}/metrics", timeout=5).text.splitlines()
    return sum(float(ln.split()[-1]) for ln in lines if ln.startswith("pd_retries_total"))


@pytest.mark.parametrize(
    ("fault", "prefill", "decode", "victim"),
    [
        ("P never uploads prompt ids", [["--fault_fail_rate", "1"], []], [[], []], "prefill"),
        ("D never reports its KV slots", [[], []], [["--fault_fail_rate", "1"], []], "decode"),
        ("hand-off fails (status 4)", [[], []], [["--fault_drop_kv_rate", "1"], []], "decode"),
    ],
)  # fmt: skip
def test_a_failure_before_the_first_token_is_retried_on_another_pair(
    procs: ProcGroup,
    tok: ModelTokenizer,
    fault: str,
    prefill: list[list[str]],
    decode: list[list[str]],
    victim: str,
) -> None:
    c = start(procs, prefill, decode)
    prompts = [f"Retry me please {i}" for i in range(8)]
    outcomes = asyncio.run(run_load(c.url, prompts, 6, concurrency=4))
    tally = record(fault, outcomes)
    assert tally.row[2:] == (8, 0, 0), [o for o in outcomes if not o.ok]
    for prompt, outcome in zip(prompts, outcomes, strict=True):
        assert outcome.text == expected(tok, prompt, 6, ignore_eos=True)[0]
    assert max(o.seconds for o in outcomes) < 1.5 + 2  # one deadline, then the retry
    assert c.node(victim, 0).stats()["dropped"] > 0 and retries(c) >= 1


def streams_through_a_fault(c: Cluster, act: object, n: int = 6) -> list[tuple[Outcome, float]]:
    """``n`` long streams; ``act()`` once all are decoding; each outcome with its end, in
    seconds since."""

    async def scenario() -> list[tuple[Outcome, float]]:
        async with httpx.AsyncClient(timeout=None) as client:
            started = time.monotonic()
            decoding: list[str] = []
            tasks = [
                asyncio.create_task(
                    stream_one(client, c.url, f"Once upon a time {i}", 400, 20, decoding)
                )
                for i in range(n)
            ]
            await until_decoding(decoding, n)
            await act(client)  # type: ignore[operator]
            at = time.monotonic()
            outcomes = await asyncio.gather(*tasks)
            return [(o, started + o.seconds - at) for o in outcomes]

    return asyncio.run(scenario())


def test_a_decode_node_killed_mid_stream_fails_its_streams_at_once(procs: ProcGroup) -> None:
    c = start(procs, [[], []], [[], []])

    async def kill(_: httpx.AsyncClient) -> None:
        c.node("decode", 0).proc.kill()

    results = streams_through_a_fault(c, kill)
    tally = record("D killed mid-stream", [o for o, _ in results])
    failed = [(o, s) for o, s in results if not o.ok]
    assert tally.row[4] == 0 and failed and len(failed) < len(results)
    # at once: well before the 3 s token deadline (node_failed names the lost socket)
    assert [(o.error and o.error["type"], s < 3.0) for o, s in failed] == [
        ("node_failed", True)
    ] * len(failed), failed


def test_a_node_that_stops_heartbeating_is_dropped(procs: ProcGroup) -> None:
    c = start(procs, [[], []], [[], []])
    victim = c.node("decode", 0)

    async def silence(client: httpx.AsyncClient) -> None:
        await client.put(f"{victim.url}/sim/faults", json={"hang": True, "no_heartbeat": True})

    results = streams_through_a_fault(c, silence)
    tally = record("D stops heartbeating (hung)", [o for o, _ in results])
    failed = [(o, s) for o, s in results if not o.ok]
    assert tally.row[4] == 0 and failed and len(failed) < len(results)
    for outcome, seconds in failed:  # the 1 s heartbeat deadline, not the 3 s token deadline
        assert outcome.error and "heartbeat" in outcome.error["message"] and seconds < 3.0


def test_client_disconnect_aborts_both_nodes_and_an_empty_pool_is_503(procs: ProcGroup) -> None:
    c = Cluster(procs)
    c.start_master(*FAST)
    c.add_node("prefill", 0, *V12)
    c.wait_ready(1, 0)
    r = httpx.post(f"{c.url}/generate", json={"inputs": "Hi", "parameters": {}}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_decode_node"
    c.add_node("decode", 0, *V12)
    c.wait_ready(1, 1)
    body = {"inputs": "Tell me a long story", "parameters": {"max_new_tokens": 400}}
    with httpx.stream("POST", f"{c.url}/generate_stream", json=body, timeout=10) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data:")
    prefill, decode = c.node("prefill"), c.node("decode")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and min(n.stats()["aborts"] for n in (prefill, decode)) < 1:
        time.sleep(0.05)
    assert prefill.stats()["aborts"] == decode.stats()["aborts"] == 1
    assert decode.stats()["kv_used_tokens"] == 0
    record("client disconnects mid-stream", [Outcome(200, error={"type": "client_closed"})])


def test_zz_fault_table() -> None:
    if not TALLIES:
        pytest.skip("no fault scenario ran")
    print_fault_table("fault (v1.2.0 nodes)", TALLIES)
    assert all(t.row[4] == 0 for t in TALLIES)
