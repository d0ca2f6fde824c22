"""``pd-bench`` / ``python -m benchmark_client``: LightLLM's benchmark client flags, and more.

Closed loop (``--num_clients`` at once) or Poisson arrivals (``--request_rate``), optional
shared prefixes, a live progress bar, a percentile table, ``--dump_file`` JSON and
``--plot`` PNG (needs matplotlib: ``pip install 'pdctl[plot]'``). A bad URL, an
unreachable server or a missing matplotlib is a one-line error and exit code 2, before the
run; a run in which any request failed exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from benchmark_client.client import RequestRecord, lightllm_body, openai_body, run_workload
from benchmark_client.http import Target
from benchmark_client.report import check_plotting, dump, plot, render_table, summarize
from benchmark_client.workload import (
    PromptMaker,
    Workload,
    arrival_offsets,
    build_prompts,
    output_lengths,
)
from pdwire.cli import CommandParser

EXIT_USAGE = 2
EXIT_FAILED_REQUESTS = 1


def build_parser() -> CommandParser:
    p = CommandParser("pd-bench", __doc__)
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:60011/generate_stream")
    p.add_argument("--num_clients", type=int, default=100, help="requests in flight at most")
    p.add_argument("--input_num", type=int, default=2000, help="requests to send")
    p.add_argument("--input_len", type=int, default=1024, help="prompt tokens")
    p.add_argument("--output_len", type=int, default=128, help="tokens to generate")
    p.add_argument(
        "--output_spread",
        choices=["fixed", "lightllm"],
        default="fixed",
        help="fixed: --output_len each; lightllm: LightLLM's benchmark_client's random "
        "lengths in [2, 2 x --output_len] around --output_len, to compare with its numbers",
    )
    p.add_argument("--tokenizer_path", default=None, help="dir or file with tokenizer.json")
    p.add_argument("--server_api", choices=["lightllm", "openai"], default="lightllm")
    p.add_argument(
        "--model", default=None, help="model name for --server_api openai (default: the server's)"
    )
    p.add_argument("--dump_file", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--request_rate",
        type=float,
        default=float("inf"),
        help="Poisson arrivals per second (default: all at once)",
    )
    p.add_argument("--shared_prefix_len", type=int, default=0)
    p.add_argument("--num_prefixes", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of TTFT, ITL, throughput")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument(
        "--stamped",
        action="store_true",
        help="token texts are node send times (simulated engine --text_mode timestamp)",
    )
    return p


def fail(message: str) -> None:
    print(f"pd-bench: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


async def check_reachable(target: Target) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), 5)
    except (OSError, TimeoutError) as exc:
        fail(f"cannot reach {target.host}:{target.port}: {exc or type(exc).__name__}")
    writer.close()


def validate(args: argparse.Namespace) -> Target:
    try:
        target = Target.parse(args.url)
    except ValueError as exc:
        fail(str(exc))
    for name in ("num_clients", "input_num", "input_len", "output_len", "num_prefixes"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.request_rate <= 0:
        fail(f"--request_rate must be positive, got {args.request_rate}")
    if not 0 <= args.shared_prefix_len <= args.input_len:
        fail(f"--shared_prefix_len must be between 0 and --input_len, got {args.shared_prefix_len}")
    if args.plot and (problem := check_plotting()):
        fail(problem)
    return target


async def run(args: argparse.Namespace, target: Target) -> tuple[list[RequestRecord], float]:
    await check_reachable(target)
    workload = Workload(
        args.input_len,
        args.output_len,
        args.input_num,
        args.seed,
        args.shared_prefix_len,
        args.num_prefixes,
        args.request_rate,
    )
    try:
        maker = PromptMaker(args.tokenizer_path)
    except FileNotFoundError as exc:
        fail(str(exc))
    prompts = build_prompts(workload, maker)
    lengths = output_lengths(workload, args.output_spread)
    if args.server_api == "openai":
        bodies = [openai_body(p, n, args.model) for p, n in zip(prompts, lengths, strict=True)]
    else:
        bodies = [lightllm_body(p, n) for p, n in zip(prompts, lengths, strict=True)]
    input_tokens = [maker.count(p) for p in prompts]
    with _progress(args.no_progress, len(bodies)) as advance:
        return await run_workload(
            target,
            bodies,
            input_tokens,
            arrival_offsets(workload),
            args.num_clients,
            args.server_api,
            args.timeout,
            on_done=advance,
            stamped=args.stamped,
        )


class _progress:
    """A rich progress bar advanced once per finished request (or nothing): done/total,
    failed so far, elapsed and remaining time."""

    def __init__(self, disabled: bool, total: int) -> None:
        self._disabled = disabled
        self._total = total
        self._bar: Any = None

    def __enter__(self) -> Any:
        if self._disabled:
            return lambda record: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("requests"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task("requests", total=self._total, failed=0)
        failed = 0

        def advance(record: RequestRecord) -> None:
            nonlocal failed
            failed += not record.ok
            self._bar.update(task, advance=1, failed=failed)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    target = validate(args)
    try:
        import uvloop

        records, duration = uvloop.run(run(args, target))
    except ImportError:
        records, duration = asyncio.run(run(args, target))
    summary = summarize(records, duration)
    print(render_table(summary))
    if args.dump_file:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        dump(args.dump_file, summary, records, config)
    if args.plot:
        plot(args.plot, records, run_title(args, summary))
    if summary["succeeded"] < summary["requests"]:
        failed = summary["requests"] - summary["succeeded"]
        print(f"pd-bench: {failed} of {summary['requests']} requests failed", file=sys.stderr)
        raise SystemExit(EXIT_FAILED_REQUESTS)


def run_title(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """The run's settings, for the plot's title."""
    rate = "all at once" if args.request_rate == float("inf") else f"{args.request_rate}/s"
    return (
        f"{args.url} ({args.server_api}): {args.input_num} requests, {args.num_clients} "
        f"clients, {rate}, input {args.input_len}, output {args.output_len} tokens; "
        f"{summary['succeeded']}/{summary['requests']} ok"
    )
