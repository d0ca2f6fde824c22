"""Statistics of a run (pure functions of the records) and their table, JSON and plot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark_client.client import RequestRecord

PERCENTILES = (25, 50, 75, 90, 95, 99, 100)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, float]:
    out = {f"p{p}": percentile(values, p) for p in PERCENTILES}
    out["mean"] = sum(values) / len(values) if values else float("nan")
    out["count"] = len(values)
    return out


def summarize(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    itls = [gap for r in ok for gap in r.itls()]
    output_tokens = sum(r.output_tokens for r in records)
    input_tokens = sum(r.input_tokens for r in ok)
    return {
        "requests": len(records),
        "succeeded": len(ok),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "duration_s": duration_s,
        "requests_per_s": len(ok) / duration_s if duration_s > 0 else 0.0,
        "input_tokens_per_s": input_tokens / duration_s if duration_s > 0 else 0.0,
        "output_tokens_per_s": output_tokens / duration_s if duration_s > 0 else 0.0,
        "output_tokens": output_tokens,
        "request_time_s": distribution([r.end - r.start for r in ok]),
        "ttft_s": distribution([r.ttft for r in ok if r.ttft is not None]),
        "itl_s": distribution(itls),
        "delivery_s": distribution([d for r in ok for d in r.delivery_s]),
    }


def render_table(summary: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pd-bench results")
    table.add_column("metric")
    for p in PERCENTILES:
        table.add_column(f"P{p}", justify="right")
    table.add_column("mean", justify="right")
    for key, label in (
        ("request_time_s", "request time (ms)"),
        ("ttft_s", "TTFT (ms)"),
        ("itl_s", "inter-token (ms)"),
    ):
        d = summary[key]
        table.add_row(
            label, *(f"{d[f'p{p}'] * 1e3:.2f}" for p in PERCENTILES), f"{d['mean'] * 1e3:.2f}"
        )
    console = Console(width=120, force_terminal=False, color_system=None)
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(summary["errors"].items())) or "none"
    with console.capture() as captured:
        console.print(table)
        console.print(
            f"requests {summary['succeeded']}/{summary['requests']} ok"
            f" in {summary['duration_s']:.2f} s | {summary['requests_per_s']:.2f} req/s"
            f" | input {summary['input_tokens_per_s']:.0f} tok/s"
            f" | output {summary['output_tokens_per_s']:.0f} tok/s"
        )
        console.print(f"errors: {errors}")
    return captured.get()


def dump(
    path: Path, summary: dict[str, Any], records: Sequence[RequestRecord], config: dict[str, Any]
) -> None:
    per_request = [
        {
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "request_time_s": r.end - r.start,
            "ttft_s": r.ttft,
            "error": r.error,
        }
        for r in records
    ]
    path.write_text(
        json.dumps({"config": config, "summary": summary, "requests": per_request}, indent=1)
    )


def plot(path: Path, records: Sequence[RequestRecord]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].hist([r.ttft * 1e3 for r in ok if r.ttft is not None], bins=50)
    axes[0].set_title("TTFT (ms)")
    axes[1].hist([g * 1e3 for r in ok for g in r.itls()], bins=50)
    axes[1].set_title("inter-token latency (ms)")
    times = sorted(t for r in records for t in r.token_times)
    if times:
        start = min(r.start for r in records)
        seconds = int(times[-1] - start) + 1
        per_second = [0] * seconds
        for t in times:
            per_second[int(t - start)] += 1
        axes[2].plot(range(seconds), per_second)
    axes[2].set_title("output tokens per second")
    axes[2].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
