"""Statistics of a run (pure functions of the records) and their table, JSON and plot.

Two per-token figures, named apart because they differ: ``itl_s`` pools every gap between
tokens of every request, while ``decode_token_time_s`` is LightLLM's benchmark_client's
definition (each request's mean gap after its first token, then percentiles over requests),
so numbers compare with LightLLM's history. LightLLM's summary lines (Total QPS, average
input and output length, throughputs) are printed and dumped under its names.
"""

from __future__ import annotations

import json
import math
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
    decode_times = [t for r in ok if (t := r.decode_token_time()) is not None]
    output_tokens = sum(r.output_tokens for r in records)
    input_tokens = sum(r.input_tokens for r in ok)
    ok_output = sum(r.output_tokens for r in ok)

    def rate(n: float) -> float:
        return n / duration_s if duration_s > 0 else 0.0

    return {
        "requests": len(records),
        "succeeded": len(ok),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "streamed": all(r.streamed for r in ok),
        "duration_s": duration_s,
        "requests_per_s": rate(len(ok)),
        "input_tokens_per_s": rate(input_tokens),
        "output_tokens_per_s": rate(output_tokens),
        "output_tokens": output_tokens,
        "request_time_s": distribution([r.end - r.start for r in ok]),
        "ttft_s": distribution([r.ttft for r in ok if r.ttft is not None]),
        "itl_s": distribution(itls),
        "decode_token_time_s": distribution(decode_times),
        "delivery_s": distribution([d for r in ok for d in r.delivery_s]),
        "lightllm": {  # LightLLM's benchmark_client's summary, under its names
            "Total QPS": rate(len(ok)),
            "Avg Input Length": input_tokens / len(ok) if ok else None,
            "Avg Output Length": ok_output / len(ok) if ok else None,
            "Total Throughput": rate(input_tokens + ok_output),
            "Input Throughput": rate(input_tokens),
            "Output Throughput": rate(ok_output),
        },
    }


def json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON has neither (Python would write NaN, Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1e3:.2f}"


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
        ("itl_s", "inter-token, all gaps (ms)"),
        ("decode_token_time_s", "decode_token_time (ms)"),
    ):
        d = summary[key]
        table.add_row(label, *(_ms(d[f"p{p}"]) for p in PERCENTILES), _ms(d["mean"]))
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
        if not summary["streamed"]:
            console.print(
                "answers were not streamed (a /generate URL): TTFT and per-token times need "
                "/generate_stream (or --server_api openai on /v1/completions)"
            )
        for name, value in summary["lightllm"].items():
            unit = " token/s" if "Throughput" in name else ""
            console.print(f"{name}: {'-' if value is None else f'{value:.2f}'}{unit}")
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
    run = {"config": config, "summary": summary, "requests": per_request}
    path.write_text(json.dumps(json_safe(run), indent=1, allow_nan=False))


def check_plotting() -> str | None:
    """Why ``plot`` cannot run here, if it cannot (asked before the run, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'pdctl[plot]' (or pip install matplotlib)"
    return None


def plot(path: Path, records: Sequence[RequestRecord], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    fig.suptitle(title)
    axes[0].hist([r.ttft * 1e3 for r in ok if r.ttft is not None], bins=50)
    axes[0].set_title("TTFT")
    axes[0].set_xlabel("time to first token (ms)")
    axes[0].set_ylabel("requests")
    axes[1].hist([g * 1e3 for r in ok for g in r.itls()], bins=50)
    axes[1].set_title("inter-token latency, all gaps")
    axes[1].set_xlabel("gap between tokens (ms)")
    axes[1].set_ylabel("gaps")
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
    axes[2].set_ylabel("tokens/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
