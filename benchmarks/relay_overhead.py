"""Benchmark 1, relay overhead: what the master adds per token, and PD vs a direct engine.

(a) Per-token added latency: the decode node writes each token's send time (wall clock) as
    its text (``--text_mode timestamp``); the client subtracts it from the arrival time.
    Same host, same clock. 64-token streams at 1, 64, 512 and 2048 concurrent streams.
(b) The same workload (64 streams, 128 prompt / 64 output tokens) through the PD master and
    against the simulated engine serving /generate_stream itself (``--run_mode normal``):
    TTFT and inter-token latency, and their ratio.
"""

from __future__ import annotations

from benchmark_client.localcluster import ProcGroup, free_port, http_ok, wait_until
from benchmark_client.report import summarize
from benchmarks.common import QUIET, cluster, load, parser, print_table, workdir, write_json


def added_latency(group: ProcGroup, levels: list[int], tokens: int) -> list[dict]:
    c = cluster(group, decode=[["--text_mode", "timestamp"]])
    out = []
    for streams in levels:
        records, _ = load(f"{c.url}/generate_stream", streams, streams, 16, tokens, stamped=True)
        d = summarize(records, 1.0)["delivery_s"]
        out.append(
            {
                "streams": streams,
                "errors": sum(not r.ok for r in records),
                "p50_ms": d["p50"] * 1e3,
                "p99_ms": d["p99"] * 1e3,
                "tokens": d["count"],
            }
        )
    return out


def pd_vs_direct(group: ProcGroup, requests: int, streams: int) -> dict:
    c = cluster(group)
    pd = summarize(*load(f"{c.url}/generate_stream", requests, streams, 128, 64))
    host, port = "127.0.0.1", free_port()
    group.python(
        "normal",
        "-m",
        "node_agents.simengine",
        "--run_mode",
        "normal",
        "--host",
        host,
        "--port",
        str(port),
        *QUIET,
    )
    wait_until(lambda: http_ok(f"http://{host}:{port}/health"), 30, "the normal-mode engine")
    direct = summarize(*load(f"http://{host}:{port}/generate_stream", requests, streams, 128, 64))
    return {"pd": pd, "direct": direct}


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    levels = [1, 64] if args.smoke else [1, 64, 512, 2048]
    group = workdir()
    try:
        added = added_latency(group, levels, 16 if args.smoke else 64)
        group.stop_all()
        group.procs.clear()
        compare = pd_vs_direct(group, 64 if args.smoke else 256, 16 if args.smoke else 64)
    finally:
        group.stop_all()
    print_table(
        "per-token latency added by the master (node send -> client receive)",
        ["streams", "tokens", "errors", "p50 ms", "p99 ms"],
        [[a["streams"], a["tokens"], a["errors"], a["p50_ms"], a["p99_ms"]] for a in added],
    )
    rows = []
    for metric in ("ttft_s", "itl_s"):
        for p in ("p50", "p99"):
            pd, direct = compare["pd"][metric][p], compare["direct"][metric][p]
            rows.append(
                [f"{metric[:-2]} {p}", pd * 1e3, direct * 1e3, pd / direct if direct else 0.0]
            )
    print_table(
        "PD master vs the engine directly (same workload)",
        ["metric", "PD ms", "direct ms", "ratio"],
        rows,
    )
    write_json(
        "relay_overhead" + ("_smoke" if args.smoke else ""),
        {"added_latency": added, "pd_vs_direct": compare},
    )


if __name__ == "__main__":
    main()
