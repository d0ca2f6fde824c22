"""Benchmark: writing LightLLM's client events (``data:{...}\\n\\n``) for token entries, per entry.

The master writes one chunk per stream per relay step, usually of one entry (one token per
stream per decode step), more when a stream falls behind. Entries as the simulated engine
sends them (logprob -0.25) and as LightLLM v1.2.0 does (a float32 logprob such as
-0.0012345678954315186, nested logprobs and input usage, which the event leaves out).
Writers: ``compiled`` is what ``sse_events`` runs (``pdwire/_sse.c``; a float that is not an
integral value below 1e15 is formatted by orjson, one call each); ``python`` is the Python
path (one dict and one ``orjson.dumps`` per entry), which it replaced and must agree with.
Best of 7 rounds of thread CPU time, microseconds per entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks import wire_decode
from benchmarks.common import best_call_s, parser, print_table, write_json
from pdwire.pd_io import TokenEntry
from pdwire.sse import python_sse_events, sse_events


def sim_entry(i: int) -> TokenEntry:
    """One stream's entries (one group id), as the simulated engine sends them."""
    _, text, meta, status = wire_decode.sim_entry(i)
    return (8, text, meta, status)


def lightllm_v120_entry(i: int) -> TokenEntry:
    """As LightLLM v1.2.0 sends them, with a float32 logprob (orjson formats it)."""
    _, text, meta, status = wire_decode.lightllm_v120_entry(i)
    logprob = -0.0012345678954315186 * (1 + i % 7)
    meta["logprob"] = logprob
    meta["cumlogprob"] = logprob * (i + 1)
    meta["logprobs"] = {1234 + i: {"logprob": logprob, "rank": None, "decoded_token": text}}
    return (8, text, meta, status)


def per_entry_us(
    write: Callable[[list[TokenEntry]], bytes], entries: list[TokenEntry], smoke: bool
) -> float:
    reps = max((2000 if smoke else 200_000) // len(entries), 3)
    return best_call_s(write, entries, reps, 2 if smoke else 7) / len(entries) * 1e6


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    rows, results = [], []
    writers = {"compiled": sse_events, "python": python_sse_events}
    for shape, make in (("simengine", sim_entry), ("lightllm-v1.2.0", lightllm_v120_entry)):
        for count in (1, 8, 64):
            entries = [make(i) for i in range(count)]
            assert sse_events(entries) == python_sse_events(entries)
            row: dict[str, Any] = {"shape": shape, "entries": count}
            for name, write in writers.items():
                row[f"{name}_us_per_entry"] = per_entry_us(write, entries, args.smoke)
            row["speedup"] = row["python_us_per_entry"] / row["compiled_us_per_entry"]
            results.append(row)
            times = [row[f"{name}_us_per_entry"] for name in writers]
            rows.append([shape, count, *times, row["speedup"]])
    print_table(
        "Client events (sse_events), us per entry (best of rounds)",
        ["entries", "per chunk", "compiled", "python", "x faster"],
        rows,
    )
    write_json("sse_encode" + ("_smoke" if args.smoke else ""), {"results": results, "errors": 0})


if __name__ == "__main__":
    main()
