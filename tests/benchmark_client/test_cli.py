"""pd-bench as a user runs it: against a real master with simulated nodes, and bad targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pdlocal.cluster import Cluster, ProcGroup, free_port
from pdmodel.tokenizer import DEFAULT_MODEL_DIR


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "benchmark_client", "--no_progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_unreachable_server_is_a_one_line_error_and_exit_2() -> None:
    r = bench("--url", f"http://127.0.0.1:{free_port()}/generate_stream", "--input_num", "1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "cannot reach" in r.stderr


def test_malformed_url_is_exit_2() -> None:
    for url in ("ftp://host/x", "http:///nohost", "not a url", "http://127.0.0.1:99999/x"):
        r = bench("--url", url)
        assert r.returncode == 2, url
        assert r.stderr.startswith("pd-bench: ")


def test_bench_against_a_cluster_reports_and_dumps(procs: ProcGroup, tmp_path: Path) -> None:
    c = Cluster(procs)
    c.start_master("--max_inflight", "8", "--max_queue", "0")
    c.add_node("prefill", 0)
    c.add_node("decode", 0)
    c.wait_ready(1, 1)
    dump = tmp_path / "run.json"
    r = bench(
        "--url",
        f"{c.url}/generate_stream",
        "--num_clients",
        "300",
        "--input_num",
        "300",
        "--input_len",
        "32",
        "--output_len",
        "16",
        "--tokenizer_path",
        str(DEFAULT_MODEL_DIR),
        "--dump_file",
        str(dump),
    )
    assert r.returncode == 1, r.stderr  # some requests were refused
    assert "requests failed" in r.stderr
    assert "TTFT (ms)" in r.stdout and "decode_token_time (ms)" in r.stdout
    result = json.loads(dump.read_text())
    summary = result["summary"]
    refused = summary["errors"].get("http_429:overloaded", 0)
    assert refused > 0 and summary["succeeded"] + refused == 300  # nothing else went wrong
    ok = [q for q in result["requests"] if q["error"] is None]
    assert all(q["output_tokens"] == 16 and q["input_tokens"] == 32 for q in ok)
    assert all(0 < q["ttft_s"] < q["request_time_s"] for q in ok)


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_plot_without_matplotlib_fails_before_the_run() -> None:
    try:
        import matplotlib  # noqa: F401

        pytest.skip("matplotlib is installed here")
    except ImportError:
        pass
    r = bench("--url", f"http://127.0.0.1:{free_port()}/generate_stream", "--plot", "x.png")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--plot needs matplotlib: pip install 'pdctl[plot]'" in r.stderr


def test_whole_answer_url_counts_tokens_and_says_why_no_token_times(
    procs: ProcGroup, tmp_path: Path
) -> None:
    """LightLLM's own scripts benchmark /generate; and 0 answers of 5 is exit 1, not 0."""
    c = Cluster(procs)
    c.start_master()
    dump = tmp_path / "none.json"
    common = ["--input_num", "5", "--num_clients", "5", "--input_len", "8", "--output_len", "4"]
    r = bench("--url", f"{c.url}/generate", *common, "--dump_file", str(dump))
    assert r.returncode == 1 and "5 of 5 requests failed" in r.stderr
    assert strict_json(dump.read_text())  # no NaN or Infinity: --request_rate is inf
    c.add_node("prefill", 0)
    c.add_node("decode", 0)
    c.wait_ready(1, 1)
    dump = tmp_path / "run.json"
    r = bench("--url", f"{c.url}/generate", *common, "--dump_file", str(dump))
    assert r.returncode == 0, r.stderr
    assert "answers were not streamed" in r.stdout and "nan" not in r.stdout
    assert "Avg Output Length: 4.00" in r.stdout and "Total QPS: " in r.stdout
    result = strict_json(dump.read_text())
    assert isinstance(result, dict)
    assert result["summary"]["output_tokens"] == 20 and result["summary"]["ttft_s"]["p50"] is None
    assert result["config"]["request_rate"] is None
