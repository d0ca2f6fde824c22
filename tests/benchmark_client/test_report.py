from __future__ import annotations

import math

import pytest

from benchmark_client.client import RequestRecord, parse_events
from benchmark_client.report import percentile, render_table, summarize


def trace() -> list[RequestRecord]:
    """Three requests on a made-up clock: two succeed, one is refused."""
    return [
        RequestRecord(10, start=0.0, end=1.0, token_times=[0.2, 0.4, 0.6, 1.0], output_tokens=4),
        RequestRecord(20, start=0.5, end=2.5, token_times=[1.5, 2.0, 2.5], output_tokens=3),
        RequestRecord(30, start=1.0, end=1.01, error="http_429:overloaded"),
    ]


def test_percentiles_interpolate_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == 1.75
    assert percentile(values, 100) == 4.0
    assert math.isnan(percentile([], 50))


def test_summary_of_a_fixed_trace() -> None:
    s = summarize(trace(), duration_s=2.5)
    assert (s["requests"], s["succeeded"], s["errors"]) == (3, 2, {"http_429:overloaded": 1})
    assert s["output_tokens"] == 7
    assert s["requests_per_s"] == pytest.approx(2 / 2.5)
    assert s["input_tokens_per_s"] == pytest.approx(30 / 2.5)  # refused requests add no input
    assert s["output_tokens_per_s"] == pytest.approx(7 / 2.5)
    assert s["ttft_s"]["p50"] == pytest.approx(0.6)  # TTFTs 0.2 and 1.0
    assert s["request_time_s"]["p100"] == pytest.approx(2.0)
    itls = sorted([0.2, 0.2, 0.4, 0.5, 0.5])
    assert s["itl_s"]["count"] == 5
    assert s["itl_s"]["p50"] == pytest.approx(itls[2])
    assert s["itl_s"]["mean"] == pytest.approx(sum(itls) / 5)
    table = render_table(s)
    assert "TTFT (ms)" in table and "http_429:overloaded: 1" in table


def test_sse_parsing_counts_tokens_per_chunk_and_errors() -> None:
    chunk = (
        b'data:{"token": {"text": "a"}, "finished": false}\n\n'
        b'data: {"token": {"text": "b"}, "finished": true}\n\n'
        b'data:{"error": {"type": "node_failed", "code": "x", "message": "y"}}\n\n'
    )
    assert parse_events(chunk, "lightllm") == (2, "stream:node_failed", ["a", "b"])
    openai = b'data: {"choices": [{"text": "hi"}]}\n\ndata: [DONE]\n\n'
    assert parse_events(openai, "openai") == (1, None, ["hi"])
