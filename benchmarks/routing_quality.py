"""Benchmark 4, routing quality: a shared-prefix workload under each prefill policy.

Three prefill nodes with a small prompt cache each (so where a prompt goes decides whether
its prefix is cached) and a prefill cost per computed token, two decode nodes; prompts of
1024 tokens of which 768 are one of 32 shared prefixes. Reports TTFT p50/p99, the
prefill nodes' cache hit rate and the busiest node's share of requests.
"""

from __future__ import annotations

from benchmark_client.report import summarize
from benchmarks.common import cluster, load, parser, print_table, workdir, write_json

PREFILL = [
    "--prefill_base_ms",
    "5",
    "--prefill_per_token_us",
    "100",
    "--prefix_cache_tokens",
    "8192",
]
POLICIES = ["random", "round_robin", "least_load", "power_of_two", "prefix_affinity"]


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    policies = ["prefix_affinity"] if args.smoke else POLICIES
    requests = 24 if args.smoke else 400
    results = []
    for policy in policies:
        group = workdir()
        try:
            c = cluster(
                group, master=["--prefill-policy", policy], prefill=[PREFILL] * 3, decode=[[], []]
            )
            records, duration = load(
                f"{c.url}/generate_stream",
                requests,
                16,
                1024,
                16,
                shared_prefix_len=768,
                num_prefixes=32,
            )
            stats = [c.node("prefill", i).stats() for i in range(3)]
        finally:
            group.stop_all()
        s = summarize(records, duration)
        hit = sum(x["cached_prompt_tokens"] for x in stats) / max(
            sum(x["prompt_tokens"] for x in stats), 1
        )
        results.append(
            {
                "policy": policy,
                "ttft_p50_ms": s["ttft_s"]["p50"] * 1e3,
                "ttft_p99_ms": s["ttft_s"]["p99"] * 1e3,
                "hit_rate": hit,
                "max_share": max(x["requests"] for x in stats) / requests,
                "errors": sum(not r.ok for r in records),
            }
        )
    print_table(
        "shared-prefix workload (3 prefill nodes, 32 prefixes of 768 tokens)",
        ["policy", "TTFT p50 ms", "TTFT p99 ms", "hit rate", "max share", "errors"],
        [
            [
                r["policy"],
                r["ttft_p50_ms"],
                r["ttft_p99_ms"],
                r["hit_rate"],
                r["max_share"],
                r["errors"],
            ]
            for r in results
        ],
    )
    write_json("routing_quality" + ("_smoke" if args.smoke else ""), {"results": results})


if __name__ == "__main__":
    main()
