"""Benchmark 1, relay overhead: what the master adds per token, and PD vs a direct engine.

(a) Per-token delivery latency: the engine writes each token's send time (wall clock) as
    its text (``--text_mode timestamp``); the client subtracts it from the arrival time.
    Same host, same clock. 64-token streams at 1, 64, 512 and 2048 concurrent streams,
    through the master (decode node -> master -> client) and from a normal-mode engine
    straight to the client; the master's share is the difference. ``--rounds`` (5)
    alternating rounds per level are pooled, so drift and one noisy round weigh less; the
    range of the rounds' own differences is printed beside the pooled one.
(b) The same workload (64 streams, 128 prompt / 64 output tokens) through the PD master and
    against the simulated engine serving /generate_stream itself (``--run_mode normal``):
    TTFT and inter-token latency, and their ratio.
"""

from __future__ import annotations

from typing import Any

from benchmark_client.client import RequestRecord
from benchmark_client.report import summarize
from benchmarks.common import (
    QUIET,
    cluster,
    load,
    parser,
    print_table,
    result_name,
    workdir,
    write_json,
)
from pdlocal.cluster import ProcGroup, free_port, http_ok, wait_until


def normal_engine(group: ProcGroup, name: str, *extra: str) -> tuple[str, int]:
    """A simulated engine serving /generate_stream itself (no PD); returns its address."""
    host, port = "127.0.0.1", free_port()
    group.python(
        name,
        "-m",
        "node_agents.simengine",
        "--run_mode",
        "normal",
        "--host",
        host,
        "--port",
        str(port),
        *extra,
        *QUIET,
    )
    wait_until(lambda: http_ok(f"http://{host}:{port}/health"), 30, "the normal-mode engine")
    return host, port


def delivery(
    group: ProcGroup, levels: list[int], tokens: int, rounds: int, version: str
) -> list[dict[str, Any]]:
    """Per level, ``rounds`` alternating rounds through the master and straight from the
    engine; each side's percentiles come from all its rounds' tokens together, and each
    round's own p50 difference is kept too, to show how far one round can swing."""
    c = cluster(group, decode=[["--text_mode", "timestamp"]], version=version)
    host, port = normal_engine(group, "normal-stamped", "--text_mode", "timestamp")
    urls = {"pd": f"{c.url}/generate_stream", "direct": f"http://{host}:{port}/generate_stream"}
    out = []
    for streams in levels:
        row: dict[str, Any] = {"streams": streams, "rounds": rounds}
        pooled: dict[str, list[RequestRecord]] = {"pd": [], "direct": []}
        per_round = []
        for _ in range(rounds):
            p50 = {}
            for name, url in urls.items():
                records = load(url, streams, streams, 16, tokens, stamped=True)[0]
                p50[name] = summarize(records, 1.0)["delivery_s"]["p50"] * 1e3
                pooled[name] += records
            per_round.append(p50["pd"] - p50["direct"])
        for name, records in pooled.items():
            d = summarize(records, 1.0)["delivery_s"]
            row[name] = {
                "p50_ms": d["p50"] * 1e3,
                "p99_ms": d["p99"] * 1e3,
                "tokens": d["count"],
                "errors": sum(not r.ok for r in records),
            }
        row["added_p50_ms"] = row["pd"]["p50_ms"] - row["direct"]["p50_ms"]
        row["added_p99_ms"] = row["pd"]["p99_ms"] - row["direct"]["p99_ms"]
        row["added_p50_ms_by_round"] = per_round
        out.append(row)
    return out


def pd_vs_direct(group: ProcGroup, requests: int, streams: int, version: str) -> dict[str, Any]:
    c = cluster(group, version=version)
    pd = summarize(*load(f"{c.url}/generate_stream", requests, streams, 128, 64))
    host, port = normal_engine(group, "normal")
    direct = summarize(*load(f"http://{host}:{port}/generate_stream", requests, streams, 128, 64))
    return {"pd": pd, "direct": direct}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per level")
    args = p.parse_args()
    levels = [1, 8] if args.smoke else [1, 64, 512, 2048]
    group = workdir()
    try:
        rounds = 1 if args.smoke else args.rounds
        added = delivery(group, levels, 16 if args.smoke else 64, rounds, args.lightllm_version)
        group.stop_all()
        group.procs.clear()
        compare = pd_vs_direct(
            group, 16 if args.smoke else 256, 8 if args.smoke else 64, args.lightllm_version
        )
    finally:
        group.stop_all()
    print_table(
        "per-token delivery latency, engine send -> client receive (ms)",
        [
            "streams",
            "errors",
            "PD p50",
            "PD p99",
            "direct p50",
            "direct p99",
            "added p50",
            "added p99",
            "rounds' added p50",
        ],
        [
            [
                a["streams"],
                a["pd"]["errors"] + a["direct"]["errors"],
                a["pd"]["p50_ms"],
                a["pd"]["p99_ms"],
                a["direct"]["p50_ms"],
                a["direct"]["p99_ms"],
                a["added_p50_ms"],
                a["added_p99_ms"],
                _span(a["added_p50_ms_by_round"]),
            ]
            for a in added
        ],
    )
    rows = []
    for metric in ("ttft_s", "itl_s"):
        for pct in ("p50", "p99"):
            pd, direct = compare["pd"][metric][pct], compare["direct"][metric][pct]
            rows.append(
                [f"{metric[:-2]} {pct}", pd * 1e3, direct * 1e3, pd / direct if direct else 0.0]
            )
    print_table(
        "PD master vs the engine directly (same workload)",
        ["metric", "PD ms", "direct ms", "ratio"],
        rows,
    )
    write_json(
        result_name("relay_overhead", args),
        {"lightllm_version": args.lightllm_version, "delivery": added, "pd_vs_direct": compare},
    )


def _span(values: list[float]) -> str:
    """Lowest to highest, e.g. ``-1.10..+0.80``."""
    return f"{min(values):+.2f}..{max(values):+.2f}" if values else ""


if __name__ == "__main__":
    main()
