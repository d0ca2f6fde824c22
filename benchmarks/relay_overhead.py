"""Benchmark 1, relay overhead: what the master adds per token, and PD vs a direct engine,
on LightLLM's /generate_stream and on OpenAI's /v1/completions (stream=true).

(a) Per-token delivery latency: the engine writes each token's send time (wall clock) as
    its text (``--text_mode timestamp``); the client subtracts it from the arrival time
    (an OpenAI chunk may carry several tokens' stamps: each counts). Same host, same clock.
    64-token streams at 1, 64, 512 and 2048 concurrent streams, through the master on each
    path (decode node -> master -> client) and from a normal-mode engine's /generate_stream
    straight to the client; the master's share is the difference. ``--rounds`` (5)
    alternating rounds per level are pooled, so drift and one noisy round weigh less; the
    range of the rounds' own differences is printed beside the pooled one.
(b) The same workload (64 streams, 128 prompt / 64 output tokens) through the PD master on
    each path and against the simulated engine serving /generate_stream itself
    (``--run_mode normal``), in ``--rounds`` alternating rounds, pooled: TTFT and
    inter-token latency, their ratio, and the range of the rounds' own ratios. On
    /v1/completions the gaps are between chunks, as OpenAI clients see them.

JSON: ``delivery`` and ``pd_vs_direct``'s ``pd`` are /generate_stream, under the keys of
earlier results (which measured only that path); ``delivery_openai`` and ``pd_vs_direct``'s
``pd_openai`` are /v1/completions. Each row names its ``path``.
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

# path through the master, the load generator's API, the model name it sends
PATHS = (("/generate_stream", "lightllm", ""), ("/v1/completions", "openai", "model"))
DIRECT = "/generate_stream"  # the normal-mode engine serves LightLLM's API only
# Every path and round sends the same prompts; the PD nodes' prompt cache would serve the
# later ones faster (a 128-token prompt's TTFT: ~36 ms first, ~20 ms again at 8 streams),
# and the normal-mode engine has none.
UNCACHED = ["--prefix_cache_tokens", "0"]
METRICS = [(m, p) for m in ("ttft_s", "itl_s") for p in ("p50", "p99")]


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
) -> dict[str, list[dict[str, Any]]]:
    """Per level, ``rounds`` alternating rounds through the master on each path and straight
    from the engine; each side's percentiles come from all its rounds' tokens together, and
    each round's own p50 difference is kept too, to show how far one round can swing.
    Rows per master path; each row holds the engine's direct figures it is compared with."""
    c = cluster(
        group, prefill=[UNCACHED], decode=[[*UNCACHED, "--text_mode", "timestamp"]], version=version
    )
    host, port = normal_engine(group, "normal-stamped", "--text_mode", "timestamp")
    direct_url = f"http://{host}:{port}{DIRECT}"
    out: dict[str, list[dict[str, Any]]] = {path: [] for path, _, _ in PATHS}
    for streams in levels:
        pooled: dict[str, list[RequestRecord]] = {path: [] for path, _, _ in PATHS}
        direct: list[RequestRecord] = []
        per_round: dict[str, list[float]] = {path: [] for path, _, _ in PATHS}
        for _ in range(rounds):
            p50 = {}
            for path, api, model in PATHS:
                url = f"{c.url}{path}"
                records = load(
                    url, streams, streams, 16, tokens, stamped=True, api=api, model=model
                )[0]
                p50[path] = _stats(records)["p50_ms"]
                pooled[path] += records
            records = load(direct_url, streams, streams, 16, tokens, stamped=True)[0]
            direct += records
            direct_p50 = _stats(records)["p50_ms"]
            for path, value in p50.items():
                per_round[path].append(value - direct_p50)
        direct_stats = _stats(direct)
        for path, records in pooled.items():
            pd = _stats(records)
            out[path].append(
                {
                    "streams": streams,
                    "rounds": rounds,
                    "path": path,
                    "pd": pd,
                    "direct": direct_stats,
                    "added_p50_ms": pd["p50_ms"] - direct_stats["p50_ms"],
                    "added_p99_ms": pd["p99_ms"] - direct_stats["p99_ms"],
                    "added_p50_ms_by_round": per_round[path],
                }
            )
    return out


def _stats(records: list[RequestRecord]) -> dict[str, Any]:
    d = summarize(records, 1.0)["delivery_s"]
    return {
        "p50_ms": d["p50"] * 1e3,
        "p99_ms": d["p99"] * 1e3,
        "tokens": d["count"],
        "errors": sum(not r.ok for r in records),
    }


def pd_vs_direct(
    group: ProcGroup, requests: int, streams: int, output_len: int, rounds: int, version: str
) -> dict[str, Any]:
    """TTFT and inter-token gaps of one workload, ``rounds`` alternating rounds through the
    master on each path and straight from the engine, pooled; each round's p50 and p99 are
    kept too. ``pd`` is /generate_stream, ``pd_openai`` /v1/completions."""
    c = cluster(group, prefill=[UNCACHED], decode=[UNCACHED], version=version)
    host, port = normal_engine(group, "normal")
    keys = ("pd", "pd_openai")
    runs = [
        (key, path, f"{c.url}{path}", api, model)
        for key, (path, api, model) in zip(keys, PATHS, strict=True)
    ]
    runs.append(("direct", DIRECT, f"http://{host}:{port}{DIRECT}", "lightllm", ""))
    pooled: dict[str, list[RequestRecord]] = {key: [] for key, *_ in runs}
    seconds = dict.fromkeys(pooled, 0.0)
    by_round: dict[str, list[dict[str, float]]] = {key: [] for key in pooled}
    for _ in range(rounds):
        for key, _path, url, api, model in runs:
            records, duration = load(url, requests, streams, 128, output_len, api=api, model=model)
            pooled[key] += records
            seconds[key] += duration
            s = summarize(records, duration)
            by_round[key].append({f"{m[:-2]}_{p}_ms": s[m][p] * 1e3 for m, p in METRICS})
    out = {}
    for key, path, _url, api, _model in runs:
        out[key] = {"path": path, **summarize(pooled[key], seconds[key])}
        out[key]["by_round"] = by_round[key]
        if api == "openai":  # unstamped, a chunk counts as one token: how many it carried
            ok = [r for r in pooled[key] if r.ok]
            chunks = sum(r.output_tokens for r in ok)
            out[key]["tokens_per_chunk"] = len(ok) * output_len / max(chunks, 1)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per level, and of (b)")
    args = p.parse_args()
    levels = [1, 8] if args.smoke else [1, 64, 512, 2048]
    group = workdir()
    try:
        rounds = 1 if args.smoke else args.rounds
        added = delivery(group, levels, 16 if args.smoke else 64, rounds, args.lightllm_version)
        group.stop_all()
        group.procs.clear()
        compare = pd_vs_direct(
            group,
            16 if args.smoke else 256,
            8 if args.smoke else 64,
            64,
            rounds,
            args.lightllm_version,
        )
    finally:
        group.stop_all()
    rows = sorted((r for path_rows in added.values() for r in path_rows), key=_level_then_path)
    print_table(
        "per-token delivery latency, engine send -> client receive (ms);"
        f" direct: the engine's own {DIRECT}",
        [
            "streams",
            "path",
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
                a["path"],
                a["pd"]["errors"] + a["direct"]["errors"],
                a["pd"]["p50_ms"],
                a["pd"]["p99_ms"],
                a["direct"]["p50_ms"],
                a["direct"]["p99_ms"],
                a["added_p50_ms"],
                a["added_p99_ms"],
                _span(a["added_p50_ms_by_round"]),
            ]
            for a in rows
        ],
    )
    table = []
    for metric, pct in METRICS:
        direct = compare["direct"][metric][pct]
        name = f"{metric[:-2]}_{pct}_ms"
        for key in ("pd", "pd_openai"):
            pd = compare[key][metric][pct]
            ratios = [
                a[name] / b[name]
                for a, b in zip(
                    compare[key]["by_round"], compare["direct"]["by_round"], strict=True
                )
                if b[name]
            ]
            table.append(
                [
                    f"{metric[:-2]} {pct}",
                    compare[key]["path"],
                    pd * 1e3,
                    direct * 1e3,
                    pd / direct if direct else 0.0,
                    f"{min(ratios):.2f}..{max(ratios):.2f}" if ratios else "",
                ]
            )
    print_table(
        "PD master vs the engine's own /generate_stream (same workload; on /v1/completions,"
        f" {compare['pd_openai']['tokens_per_chunk']:.2f} tokens per chunk, gaps between chunks)",
        ["metric", "path", "PD ms", "direct ms", "ratio", "rounds' ratio"],
        table,
    )
    write_json(
        result_name("relay_overhead", args),
        {
            "lightllm_version": args.lightllm_version,
            "delivery": added["/generate_stream"],
            "delivery_openai": added["/v1/completions"],
            "pd_vs_direct": compare,
        },
    )


def _level_then_path(row: dict[str, Any]) -> tuple[int, int]:
    return row["streams"], [path for path, _, _ in PATHS].index(row["path"])


def _span(values: list[float]) -> str:
    """Lowest to highest, e.g. ``-1.10..+0.80``."""
    return f"{min(values):+.2f}..{max(values):+.2f}" if values else ""


if __name__ == "__main__":
    main()
