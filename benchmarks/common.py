"""What every benchmark shares: a local cluster, the load generator, a table, a JSON file."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from benchmark_client.client import RequestRecord, lightllm_body, openai_body, run_workload
from benchmark_client.http import Target
from benchmark_client.workload import PromptMaker, Workload, build_prompts
from pdlocal.cluster import Cluster, ProcGroup
from pdmodel.tokenizer import DEFAULT_MODEL_DIR
from pdwire.cli import CommandParser

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"
INSTANT = [
    "--prefill_base_ms",
    "0",
    "--prefill_per_token_us",
    "0",
    "--decode_base_ms",
    "0",
    "--decode_per_seq_us",
    "0",
]
QUIET = ["--log_level", "warning"]


def parser(description: str) -> argparse.ArgumentParser:
    p = CommandParser(Path(sys.argv[0]).stem, description)
    p.add_argument("--smoke", action="store_true", help="a ~10 s run with small numbers (CI)")
    p.add_argument(
        "--lightllm_version",
        default="v1.1.0",
        choices=["v1.1.0", "fc72ffa", "v1.2.0"],
        help="the protocol the simulated nodes speak (results get a _<version> suffix)",
    )
    return p


def result_name(name: str, args: argparse.Namespace) -> str:
    """``name``, ``_<version>`` unless v1.1.0, ``_smoke`` for a smoke run."""
    version = "" if args.lightllm_version == "v1.1.0" else f"_{args.lightllm_version}"
    return name + version + ("_smoke" if args.smoke else "")


def cluster(
    group: ProcGroup,
    master: Sequence[str] = (),
    prefill: Sequence[Sequence[str]] = ((),),
    decode: Sequence[Sequence[str]] = ((),),
    version: str = "v1.1.0",
) -> Cluster:
    c = Cluster(group)
    nodes = [*QUIET, "--kv_capacity_tokens", "4000000", "--lightllm_version", version]
    c.start_master(*QUIET, "--max_inflight", "20000", "--max_queue", "1000", *master)
    for i, extra in enumerate(prefill):
        c.add_node("prefill", i, *nodes, *extra, timing=[])
    for i, extra in enumerate(decode):
        c.add_node("decode", i, *nodes, *extra, timing=[])
    c.wait_ready(len(prefill), len(decode), timeout=60)
    return c


def workdir() -> ProcGroup:
    return ProcGroup(Path(tempfile.mkdtemp(prefix="pdctl-bench-")))


def load(
    url: str,
    requests: int,
    concurrency: int,
    input_len: int,
    output_len: int,
    shared_prefix_len: int = 0,
    num_prefixes: int = 1,
    stamped: bool = False,
    timeout: float = 300,
    api: str = "lightllm",
    model: str = "",
) -> tuple[list[RequestRecord], float]:
    """``api`` "openai" posts /v1/completions bodies for ``model``, else LightLLM's."""
    maker = PromptMaker(str(DEFAULT_MODEL_DIR))
    workload = Workload(input_len, output_len, requests, 0, shared_prefix_len, num_prefixes)
    prompts = build_prompts(workload, maker)
    if api == "openai":
        bodies = [openai_body(p, output_len, model) for p in prompts]
    else:
        bodies = [lightllm_body(p, output_len) for p in prompts]
    # uvloop, as pd-bench runs: the load generator's own reads must not be what is measured
    return uvloop.run(
        run_workload(
            Target.parse(url),
            bodies,
            [input_len] * requests,
            [0.0] * requests,
            concurrency,
            api,
            timeout,
            stamped=stamped,
        )
    )


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    path.write_text(json.dumps({"meta": meta, **data}, indent=1))
    print(f"\nwrote {path}")
    return path


def best_call_s(call: Callable[[T], object], arg: T, reps: int, rounds: int) -> float:
    """The least thread CPU seconds one ``call(arg)`` took, over ``rounds`` runs of ``reps``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(reps):
            call(arg)
        best = min(best, (time.thread_time() - start) / reps)
    return best
