"""Fault injection through real processes: retries, deadlines, breakers, overload, drain.

Each scenario records (fault, sent, succeeded, failed with a clean error, hung); the last
test prints them as a table. No request may hang.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from pdlocal.cluster import Cluster, ProcGroup, wait_until
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from tests.integration.echo_model import expected
from tests.integration.load import Tally, print_fault_table, run_load, stream_one, until_decoding

TALLIES: list[Tally] = []
FAST_FAILOVER = [
    "--first_token_timeout",
    "1.5",
    "--kv_move_timeout",
    "1",
    "--token_idle_timeout",
    "1.5",
]


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


def start(
    procs: ProcGroup, master: list[str], prefill: list[list[str]], decode: list[list[str]]
) -> Cluster:
    c = Cluster(procs)
    c.start_master(*master)
    for i, extra in enumerate(prefill):
        c.add_node("prefill", i, *extra)
    for i, extra in enumerate(decode):
        c.add_node("decode", i, *extra)
    c.wait_ready(len(prefill), len(decode))
    return c


def master_nodes(c: Cluster) -> dict[str, dict]:
    items = httpx.get(f"{c.url}/v1/nodes", timeout=5).json()["items"]
    return {n["address"]: n for n in items}


def record(fault: str, outcomes: list) -> Tally:
    tally = Tally(fault, outcomes)
    TALLIES.append(tally)
    return tally


def test_prefill_failing_30_percent_still_serves_every_request(
    procs: ProcGroup, tok: ModelTokenizer
) -> None:
    c = start(procs, FAST_FAILOVER, [["--fault_fail_rate", "0.3"], []], [[], []])
    prompts = [f"Explain how a transformer works, part {i}." for i in range(40)]
    outcomes = asyncio.run(run_load(c.url, prompts, 8, concurrency=8))
    tally = record("prefill drops 30%", outcomes)
    assert tally.row[2:] == (40, 0, 0), [o for o in outcomes if not o.ok]
    for prompt, outcome in zip(prompts, outcomes, strict=True):
        assert outcome.text == expected(tok, prompt, 8, ignore_eos=True)[0]
    assert c.node("prefill", 0).stats()["dropped"] > 0
    retries = [
        ln
        for ln in httpx.get(f"{c.url}/metrics", timeout=5).text.splitlines()
        if ln.startswith("pd_retries_total")
    ]
    assert retries and sum(float(ln.split()[-1]) for ln in retries) >= 1


def test_dropped_kv_handoff_is_retried_on_another_decode_node(procs: ProcGroup) -> None:
    c = start(procs, FAST_FAILOVER, [[], []], [["--fault_drop_kv_rate", "1.0"], []])
    prompts = [f"Hello world {i}" for i in range(12)]
    outcomes = asyncio.run(run_load(c.url, prompts, 6, concurrency=4))
    tally = record("KV hand-off dropped", outcomes)
    assert tally.row[2:] == (12, 0, 0)
    assert max(o.seconds for o in outcomes) < 1 + 3  # one hand-off deadline, then the retry
    nodes = master_nodes(c)
    bad = f"{c.node('decode', 0).host}:{c.node('decode', 0).port}"
    assert nodes[bad]["breaker"] in ("open", "half_open")
    assert all(n["breaker"] == "closed" for addr, n in nodes.items() if addr != bad)


def test_hung_decode_node_fails_its_streams_at_the_deadline(procs: ProcGroup) -> None:
    c = start(procs, FAST_FAILOVER + ["--breaker_failures", "2"], [[], []], [[], []])
    victim = c.node("decode", 0)

    async def scenario() -> list:
        async with httpx.AsyncClient(timeout=None) as client:
            decoding: list[str] = []
            tasks = [
                asyncio.create_task(
                    stream_one(client, c.url, f"Once upon a time {i}", 400, 20, decoding)
                )
                for i in range(6)
            ]
            await until_decoding(decoding, 6)
            await client.put(f"{victim.url}/sim/faults", json={"hang": True})
            hung_at = time.monotonic()
            outcomes = await asyncio.gather(*tasks)
            return [(o, time.monotonic() - hung_at) for o in outcomes]

    results = asyncio.run(scenario())
    outcomes = [o for o, _ in results]
    tally = record("decode node hangs", outcomes)
    failed = [o for o in outcomes if o.error is not None]
    assert len(failed) == 3 and tally.row[4] == 0
    assert all(o.error["type"] == "deadline_exceeded" for o in failed)
    nodes = master_nodes(c)
    addr = f"{victim.host}:{victim.port}"
    assert nodes[addr]["breaker"] == "open"
    assert all(n["breaker"] == "closed" for a, n in nodes.items() if a != addr)
    # new requests avoid the open breaker and succeed
    after = asyncio.run(run_load(c.url, [f"After {i}" for i in range(4)], 4, concurrency=2))
    assert all(o.ok for o in after)


def test_overload_is_429_not_5xx_and_breakers_stay_closed(procs: ProcGroup) -> None:
    c = start(
        procs, ["--max_inflight", "4", "--max_queue", "4", "--queue_timeout", "10"], [[]], [[]]
    )
    outcomes = asyncio.run(run_load(c.url, [f"Busy {i}" for i in range(40)], 60, concurrency=40))
    tally = record("overload (4 running + 4 queued)", outcomes)
    refused = [o for o in outcomes if o.status == 429]
    assert refused and all(o.retry_after for o in refused)
    assert all(o.status in (200, 429) for o in outcomes)
    assert tally.row[4] == 0 and tally.row[2] >= 8
    assert all(n["breaker"] == "closed" for n in master_nodes(c).values())


def test_drained_node_gets_no_new_requests_while_its_streams_finish(procs: ProcGroup) -> None:
    c = start(procs, [], [[], []], [[], []])
    drained = c.node("decode", 0)
    address = f"{drained.host}:{drained.port}"
    node_id = master_nodes(c)[address]["node_id"]
    results: list = []

    def crawl(step_ms: float) -> None:  # the drained node's streams outlast the checks
        reply = httpx.put(f"{drained.url}/sim/faults", json={"extra_latency_ms": step_ms})
        assert reply.status_code == 200, reply.text

    def long_streams() -> None:
        prompts = [f"Long story {i}" for i in range(4)]
        results.extend(asyncio.run(run_load(c.url, prompts, 150, concurrency=4)))

    crawl(100)
    runner = threading.Thread(target=long_streams)
    runner.start()
    wait_until(
        lambda: master_nodes(c)[address]["in_flight_requests"] == 2,
        10,
        "two streams running on the node to drain",
    )
    r = httpx.post(f"{c.url}/v1/nodes/{node_id}/drain", timeout=5)
    assert r.status_code == 200 and r.json()["draining"] is True
    before = drained.stats()["requests"]
    after = asyncio.run(run_load(c.url, [f"New {i}" for i in range(6)], 4, concurrency=3))
    crawl(0)
    runner.join(60)
    tally = record("decode node drained", results + after)
    assert tally.row[2:] == (10, 0, 0)
    assert drained.stats()["requests"] == before  # nothing new went to the drained node
    assert drained.stats()["finished"] == 2  # its two running streams finished


def test_zz_fault_summary_table() -> None:
    if not TALLIES:
        pytest.skip("no fault scenario ran")
    print_fault_table("fault", TALLIES)
    assert all(t.row[4] == 0 for t in TALLIES)
