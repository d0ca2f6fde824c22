"""Benchmark 6, side by side: pdmaster against SGLang's and vLLM's PD routers.

Every router relays 128-token streams from a prefill/decode pair whose steps take
``--step_ms`` (0 by default: as fast as the backend turns):
pdmaster from simulated LightLLM nodes (on /generate_stream and /v1/completions), the
peers (``pip install -e .[peers]``: sglang-router, vllm-router, both in Rust) from
``mock_worker``s over HTTP, on /v1/completions. The floors are the same client straight
on a backend: a normal-mode simulated engine (/generate_stream) and the mock decode worker.
Same load generator for all, at 8, 64 and 512 concurrent streams, in ``--rounds``
alternating rounds (each round runs every target once per level, in turn), ``--requests``
requests per run.

CPU per token is the user + system CPU of the router's process tree over a run divided by
the tokens delivered (finished streams x 128; an OpenAI event may carry several tokens,
so events per stream are shown beside it); its median over rounds and the range, and the
median of the per-round ratio to the SGLang gateway. Memory per open stream is a second
phase: a fresh router per target, decode steps of 20 ms so that ``--mem_streams`` streams
are open at once, the peak RSS of its tree minus its RSS when idle, per stream.

Without the peers installed it runs pdmaster's rows and the floors only, and says so.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmark_client.client import RequestRecord
from benchmark_client.report import summarize
from benchmarks.common import (
    INSTANT,
    cluster,
    load,
    parser,
    print_table,
    result_name,
    workdir,
    write_json,
)
from benchmarks.peers import installed, mock_workers, start_router
from benchmarks.relay_overhead import normal_engine
from pdlocal.cluster import ProcGroup, tree_cpu_seconds, tree_rss_bytes

OUTPUT_LEN = 128
INPUT_LEN = 16
SLOW_DECODE = ["--decode_base_ms", "20", "--decode_per_seq_us", "0"]
SGLANG = "sglang-gateway /v1/completions"
LABELS = {"sglang": SGLANG, "vllm": "vllm-router /v1/completions"}


@dataclass
class Target:
    name: str
    url: str  # the full endpoint
    api: str  # "lightllm" or "openai"
    pid: int | None  # the router's process; None for a floor (client -> backend directly)
    model: str = ""
    rounds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def run_once(target: Target, streams: int, requests: int) -> dict[str, Any]:
    before = tree_cpu_seconds(target.pid) if target.pid else 0.0
    records, duration = load(
        target.url, requests, streams, INPUT_LEN, OUTPUT_LEN, api=target.api, model=target.model
    )
    cpu = tree_cpu_seconds(target.pid) - before if target.pid else 0.0
    ok = [r for r in records if r.ok]
    tokens = len(ok) * OUTPUT_LEN
    s = summarize(records, duration)
    return {
        "requests": requests,
        "errors": len(records) - len(ok),
        "error_kinds": s["errors"],
        "tokens": tokens,
        "cpu_s": cpu,
        "us_per_token": cpu / tokens * 1e6 if tokens and target.pid else None,
        "tokens_per_s": tokens / duration,
        "events_per_stream": sum(r.output_tokens for r in ok) / len(ok) if ok else 0.0,
        "ttft_ms": {p: s["ttft_s"][p] * 1e3 for p in ("p50", "p99")},
        "itl_ms": {p: s["itl_s"][p] * 1e3 for p in ("p50", "p99")},
        "records": records,
    }


def steps(step_ms: float) -> list[str]:
    """The simulated nodes' timing: every prefill and decode step takes ``step_ms``, as the
    mock workers' steps do."""
    if not step_ms:
        return INSTANT
    ms = format(step_ms, "g")
    return [*INSTANT, "--prefill_base_ms", ms, "--decode_base_ms", ms]  # the last flag wins


def cost_phase(
    group: ProcGroup,
    peers: list[str],
    levels: list[int],
    rounds: int,
    smoke: bool,
    version: str,
    step_ms: float,
    per_run: int = 1024,
) -> list[Target]:
    timing = steps(step_ms)
    c = cluster(group, prefill=[timing], decode=[timing], version=version)
    assert c.master is not None and c.master.popen is not None
    master = c.master.popen.pid
    host, port = normal_engine(group, "normal", *timing)
    targets = [
        Target("pdmaster /generate_stream", f"{c.url}/generate_stream", "lightllm", master),
        Target("pdmaster /v1/completions", f"{c.url}/v1/completions", "openai", master, "model"),
    ]
    floor = f"http://{host}:{port}/generate_stream"
    targets.append(Target("floor: engine /generate_stream", floor, "lightllm", None))
    if peers:
        workers = mock_workers(group, step_ms, "mock")
        for i, name in enumerate(peers):
            proc, url = start_router(group, name, workers)
            assert proc.popen is not None
            peer = Target(LABELS[name], f"{url}/v1/completions", "openai", proc.popen.pid, "mock")
            targets.insert(i, peer)
        floor = f"{workers.decode}/v1/completions"
        targets.append(Target("floor: mock worker /v1/completions", floor, "openai", None, "mock"))
    for t in targets:  # warm up: connections, caches, the first requests' one-off costs
        load(t.url, 16, 8, INPUT_LEN, 16, api=t.api, model=t.model)
    for r in range(rounds):
        for streams in levels:
            requests = 2 * streams if smoke else max(2 * streams, per_run)
            if step_ms and not smoke:  # 4 waves: each stream lasts 128 steps
                requests = max(4 * streams, 64)
            for t in targets:
                t.rounds.setdefault(streams, []).append(run_once(t, streams, requests))
        print(f"round {r + 1}/{rounds} done", flush=True)
    return targets


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_bytes(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def memory_of(name: str, start: Callable[[ProcGroup], Target], streams: int) -> dict[str, Any]:
    group = workdir()
    try:
        t = start(group)
        assert t.pid is not None
        load(t.url, 32, 32, INPUT_LEN, 8, api=t.api, model=t.model)  # warm up
        idle = tree_rss_bytes(t.pid)
        with peak_rss(t.pid) as peak:
            records, _ = load(
                t.url,
                streams,
                streams,
                INPUT_LEN,
                OUTPUT_LEN,
                api=t.api,
                model=t.model,
                timeout=600,
            )
    finally:
        group.stop_all()
    return {
        "target": name,
        "streams": streams,
        "errors": sum(not r.ok for r in records),
        "error_kinds": sorted({r.error for r in records if r.error}),
        "idle_rss_bytes": idle,
        "peak_rss_bytes": peak[0],
        "bytes_per_stream": (peak[0] - idle) / streams,
    }


def memory_phase(peers: list[str], streams: int, version: str) -> list[dict[str, Any]]:
    def ours(path: str, api: str, model: str) -> Callable[[ProcGroup], Target]:
        def start(group: ProcGroup) -> Target:
            c = cluster(group, prefill=[[]], decode=[SLOW_DECODE], version=version)
            assert c.master is not None and c.master.popen is not None
            return Target("", f"{c.url}{path}", api, c.master.popen.pid, model)

        return start

    def peer(name: str) -> Callable[[ProcGroup], Target]:
        def start(group: ProcGroup) -> Target:
            proc, url = start_router(group, name, mock_workers(group, 20, "mock"))
            assert proc.popen is not None
            return Target("", f"{url}/v1/completions", "openai", proc.popen.pid, "mock")

        return start

    starts = {
        "pdmaster /generate_stream": ours("/generate_stream", "lightllm", ""),
        "pdmaster /v1/completions": ours("/v1/completions", "openai", "model"),
    }
    for name in peers:
        starts[LABELS[name]] = peer(name)
    return [memory_of(name, start, streams) for name, start in starts.items()]


def summary(targets: list[Target]) -> list[dict[str, Any]]:
    sglang = next((t for t in targets if t.name == SGLANG), None)
    out = []
    for streams in targets[0].rounds:
        for t in targets:
            runs = t.rounds[streams]
            costs = [r["us_per_token"] for r in runs if r["us_per_token"] is not None]
            row: dict[str, Any] = {"streams": streams, "target": t.name}
            row["us_per_token"] = statistics.median(costs) if costs else None
            row["us_per_token_range"] = [min(costs), max(costs)] if costs else None
            row["us_per_token_by_round"] = costs
            if sglang is not None and costs:
                base = [r["us_per_token"] for r in sglang.rounds[streams]]
                ratios = [c / b for c, b in zip(costs, base, strict=True) if b]
                row["x_sglang"] = statistics.median(ratios) if ratios else None
            records: list[RequestRecord] = [rec for r in runs for rec in r["records"]]
            s = summarize(records, 1.0)
            row["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs)
            row["ttft_ms"] = {p: s["ttft_s"][p] * 1e3 for p in ("p50", "p99")}
            row["itl_ms"] = {p: s["itl_s"][p] * 1e3 for p in ("p50", "p99")}
            row["events_per_stream"] = statistics.median(r["events_per_stream"] for r in runs)
            row["errors"] = sum(r["errors"] for r in runs)
            row["error_kinds"] = [r["error_kinds"] for r in runs if r["errors"]]
            out.append(row)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--mem_streams", type=int, default=2000, help="open streams, memory phase")
    p.add_argument("--no_memory", action="store_true", help="skip the memory phase")
    p.add_argument(
        "--requests",
        type=int,
        default=1024,
        help="requests per run and level (at least 2 per stream): a run is CPU seconds "
        "counted in clock ticks (10 ms), so it should last seconds, not a fraction",
    )
    p.add_argument(
        "--step_ms",
        type=float,
        default=0.0,
        help="every prefill and decode step of the backends, ms (results get a _step<N>ms suffix)",
    )
    args = p.parse_args()
    levels = [8] if args.smoke else [8, 64, 512]
    rounds = 1 if args.smoke else args.rounds
    peers = installed()
    missing = sorted({"sglang", "vllm"} - set(peers))
    if missing:
        names = ", ".join(missing)
        print(f"not installed: {names} (pip install -e .[peers]); their rows are left out")
    load_before = os.getloadavg()
    group = workdir()
    try:
        targets = cost_phase(
            group,
            peers,
            levels,
            rounds,
            args.smoke,
            args.lightllm_version,
            args.step_ms,
            args.requests,
        )
    finally:
        group.stop_all()
    rows = summary(targets)
    if args.no_memory:
        memory = []
    elif args.smoke:  # the peers' rows need two more routers started: left to full runs
        memory = memory_phase([], 100, args.lightllm_version)
    else:
        memory = memory_phase(peers, args.mem_streams, args.lightllm_version)
    load_after = os.getloadavg()

    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    print_table(
        f"CPU per relayed token, {OUTPUT_LEN}-token streams, {args.step_ms:g} ms steps, "
        f"LightLLM {args.lightllm_version} "
        f"(median of {rounds} alternating rounds; "
        f"load avg {load_before[0]:.1f} -> {load_after[0]:.1f})",
        [
            "streams",
            "target",
            "CPU us/token",
            "range",
            "x SGLang",
            "tokens/s",
            "TTFT p50/p99 ms",
            "ITL p50/p99 ms",
            "events/stream",
            "errors",
        ],
        [
            [
                r["streams"],
                r["target"],
                fmt(r["us_per_token"]),
                _span(r["us_per_token_range"]),
                fmt(r.get("x_sglang"), ".2f"),
                fmt(r["tokens_per_s"], ".0f"),
                f"{r['ttft_ms']['p50']:.1f}/{r['ttft_ms']['p99']:.1f}",
                f"{r['itl_ms']['p50']:.2f}/{r['itl_ms']['p99']:.2f}",
                fmt(r["events_per_stream"]),
                r["errors"],
            ]
            for r in rows
        ],
    )
    if memory:
        print_table(
            "memory per open stream (fresh router each, 20 ms steps)",
            ["target", "streams", "errors", "idle RSS MB", "peak RSS MB", "KB per stream"],
            [
                [
                    m["target"],
                    m["streams"],
                    m["errors"],
                    m["idle_rss_bytes"] / 2**20,
                    m["peak_rss_bytes"] / 2**20,
                    m["bytes_per_stream"] / 1024,
                ]
                for m in memory
            ],
        )
    write_json(
        result_name("vs_gateways" + (f"_step{args.step_ms:g}ms" if args.step_ms else ""), args),
        {
            "lightllm_version": args.lightllm_version,
            "step_ms": args.step_ms,
            "peers": peers,
            "missing_peers": missing,
            "rounds": rounds,
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "cost": rows,
            "cost_by_round": [
                {"target": t.name, "streams": s, **{k: v for k, v in r.items() if k != "records"}}
                for t in targets
                for s, runs in t.rounds.items()
                for r in runs
            ],
            "memory": memory,
        },
    )


def _span(lo_hi: list[float] | None) -> str:
    return "-" if lo_hi is None else f"{lo_hi[0]:.1f}..{lo_hi[1]:.1f}"


if __name__ == "__main__":
    main()
