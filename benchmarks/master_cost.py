"""Benchmark 2, master cost: CPU microseconds per relayed token, and output tokens/s.

One master, one prefill and one decode simulated node whose steps take 0 ms (the engine
sends as fast as it can); 128-token streams at 8, 64 and 512 concurrent streams, on
LightLLM's /generate_stream and on OpenAI's /v1/completions. The cost is the master
process's user + system CPU over the run divided by the tokens delivered (finished streams
x 128: an OpenAI chunk may carry several tokens; tokens/s is capped by the load generator
and the nodes sharing this machine's cores).
"""

from __future__ import annotations

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
from pdlocal.cluster import cpu_seconds

PATHS = (("/generate_stream", "lightllm", ""), ("/v1/completions", "openai", "model"))
OUTPUT_LEN = 128


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    levels = [8] if args.smoke else [8, 64, 512]
    rows, results = [], []
    group = workdir()
    try:
        c = cluster(group, prefill=[INSTANT], decode=[INSTANT], version=args.lightllm_version)
        assert c.master is not None and c.master.popen is not None
        pid = c.master.popen.pid
        for path, api, model in PATHS:  # warm up
            load(f"{c.url}{path}", 16, 8, 16, 16, api=api, model=model)
        for streams in levels:
            requests = 16 if args.smoke else max(4 * streams, 256)
            for path, api, model in PATHS:
                before = cpu_seconds(pid)
                records, duration = load(
                    f"{c.url}{path}", requests, streams, 16, OUTPUT_LEN, api=api, model=model
                )
                cpu = cpu_seconds(pid) - before
                tokens = sum(r.ok for r in records) * OUTPUT_LEN
                errors = sum(not r.ok for r in records)
                row = {
                    "streams": streams,
                    "path": path,
                    "requests": requests,
                    "tokens": tokens,
                    "errors": errors,
                    "master_cpu_s": cpu,
                    "us_per_token": cpu / tokens * 1e6 if tokens else 0.0,
                    "tokens_per_s": tokens / duration,
                }
                results.append(row)
                rows.append(
                    [streams, path, tokens, errors, row["us_per_token"], row["tokens_per_s"]]
                )
    finally:
        group.stop_all()
    print_table(
        f"master cost (128-token streams, 0 ms decode steps, LightLLM {args.lightllm_version})",
        ["streams", "path", "tokens", "errors", "CPU us/token", "tokens/s"],
        rows,
    )
    write_json(
        result_name("master_cost", args),
        {"lightllm_version": args.lightllm_version, "results": results},
    )


if __name__ == "__main__":
    main()
