from __future__ import annotations

import math

import pytest

from benchmark_client.client import RequestRecord, parse_events
from benchmark_client.report import percentile, render_table, summarize
from benchmark_client.workload import Workload, output_lengths


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


def test_decode_token_time_is_lightllms_per_request_mean_then_percentiles() -> None:
    s = summarize(trace(), duration_s=2.5)
    # request 1: gaps 0.2, 0.2, 0.4 (mean 0.8/3); request 2: gaps 0.5, 0.5 (mean 0.5)
    means = sorted([0.8 / 3, 0.5])
    d = s["decode_token_time_s"]
    assert d["count"] == 2
    assert d["p50"] == pytest.approx(sum(means) / 2)
    assert d["p100"] == pytest.approx(0.5)
    assert s["itl_s"]["p50"] == pytest.approx(0.4)  # pooled gaps tell another story


def test_lightllms_summary_lines_under_its_names() -> None:
    s = summarize(trace(), duration_s=2.5)
    assert s["lightllm"] == pytest.approx(
        {
            "Total QPS": 2 / 2.5,
            "Avg Input Length": 15.0,
            "Avg Output Length": 3.5,
            "Total Throughput": (30 + 7) / 2.5,
            "Input Throughput": 30 / 2.5,
            "Output Throughput": 7 / 2.5,
        }
    )
    table = render_table(s)
    for line in ("Total QPS: 0.80", "Avg Input Length: 15.00", "Avg Output Length: 3.50"):
        assert line in table
    assert "decode_token_time (ms)" in table and "inter-token, all gaps (ms)" in table


def test_a_run_without_answers_renders_dashes_not_nan() -> None:
    s = summarize([RequestRecord(5, start=0, end=1, error="http_503:no_node_available")], 1.0)
    table = render_table(s)
    assert "nan" not in table and "Avg Output Length: -" in table


def test_lightllm_output_spread_draws_as_its_benchmark_client_does() -> None:
    workload = Workload(input_len=8, output_len=128, num_requests=4000, seed=3)
    assert output_lengths(workload, "fixed") == [128] * 4000
    lengths = output_lengths(workload, "lightllm")
    assert min(lengths) == 2 and max(lengths) == 256  # clipped at both ends
    assert 120 < sum(lengths) / len(lengths) < 138  # centred on (2 + 256) / 2
    assert lengths == output_lengths(workload, "lightllm")  # seeded
