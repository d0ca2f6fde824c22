"""Benchmark 3, scale: 10,000 concurrent streams through one master on this machine.

Memory per stream is the master's peak RSS during the run minus its RSS when idle with
its nodes connected, divided by the streams; every stream must end without an error.
LightLLM's /generate_stream and OpenAI's /v1/completions each get a fresh master.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.common import cluster, load, parser, print_table, workdir, write_json
from pdlocal.cluster import rss_bytes

DECODE = ["--decode_base_ms", "20", "--decode_per_seq_us", "5"]
PATHS = (("/generate_stream", "lightllm", ""), ("/v1/completions", "openai", "model"))


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    streams = 64 if args.smoke else 10_000
    results = [one_path(path, api, model, streams) for path, api, model in PATHS]
    print_table(
        "concurrent streams through one master",
        ["path", "streams", "errors", "idle RSS MB", "peak RSS MB", "KB per stream", "seconds"],
        [
            [
                r["path"],
                streams,
                r["errors"],
                r["idle_rss_bytes"] / 2**20,
                r["peak_rss_bytes"] / 2**20,
                r["bytes_per_stream"] / 1024,
                r["duration_s"],
            ]
            for r in results
        ],
    )
    write_json("scale" + ("_smoke" if args.smoke else ""), {"streams": streams, "paths": results})


def one_path(path: str, api: str, model: str, streams: int) -> dict[str, Any]:
    group = workdir()
    peak = [0]
    try:
        c = cluster(group, prefill=[[]], decode=[DECODE, DECODE])
        assert c.master is not None and c.master.popen is not None
        pid = c.master.popen.pid
        load(f"{c.url}{path}", 32, 32, 16, 8, api=api, model=model)  # warm up
        idle = rss_bytes(pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        records, duration = load(
            f"{c.url}{path}", streams, streams, 16, 32, timeout=600, api=api, model=model
        )
        stop.set()
        sampler.join()
    finally:
        group.stop_all()
    return {
        "path": path,
        "errors": sum(not r.ok for r in records),
        "idle_rss_bytes": idle,
        "peak_rss_bytes": peak[0],
        "bytes_per_stream": (peak[0] - idle) / streams,
        "duration_s": duration,
        "error_kinds": sorted({r.error for r in records if r.error}),
    }


if __name__ == "__main__":
    main()
