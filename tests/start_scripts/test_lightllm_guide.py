"""The README's "Coming from LightLLM" table, run: LightLLM's DeepSeek guide, single-master
mode (section 3.1) with our single_pd_master scripts on the simulated engine, then its
section 4.1 curl and its section 4.2 benchmark command (pd-bench with the same flags).
Section 3.2's scripts are what ``local_cluster.sh`` runs (tests/start_scripts/
test_local_cluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pdlocal.cluster import FAST_TIMING, ProcGroup, free_port, http_ok, wait_until
from pdmodel.tokenizer import DEFAULT_MODEL_DIR
from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "start_scripts" / "single_pd_master"


def script(procs: ProcGroup, name: str, *args: str, **env: str) -> None:
    """Run a start script as a test process (its log in the test's directory)."""
    procs.python(name, "-c", "import os, sys; os.execvp('bash', ['bash', *sys.argv[1:]])",
                 str(SCRIPTS / f"{name}.sh"), *args, env=env)  # fmt: skip


def test_lightllm_single_master_guide_runs_as_written(procs: ProcGroup, tmp_path: Path) -> None:
    master_port = free_port()
    master = f"http://127.0.0.1:{master_port}"
    common = {"PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT), "ENGINE": "sim",
              "PD_MASTER_PORT": str(master_port)}  # fmt: skip
    # sh pd_master.sh <pd_master_ip>
    script(procs, "pd_master", "127.0.0.1", **common)
    wait_until(lambda: http_ok(f"{master}/health"), 20, "the master")
    # sh pd_prefill.sh <host> <pd_master_ip>; sh pd_decode.sh <host> <pd_master_ip>
    for role, host in (("prefill", "127.0.0.61"), ("decode", "127.0.0.62")):
        port = free_port(host)
        env = {**common, f"{role.upper()}_PORT": str(port), "LOG_DIR": str(tmp_path / role)}
        agent_flags = ["--startsecs", "0.5", "--api_port", str(free_port())]
        engine_flags = [*FAST_TIMING, "--pd_reconnect_s", "0.3"]
        if role == "decode":
            engine_flags += ["--pd_decode_rpyc_port", str(free_port(host))]
        script(procs, f"pd_{role}", host, "127.0.0.1", *agent_flags, "--", *engine_flags, **env)

    def joined() -> bool:
        try:
            ready = httpx.get(f"{master}/readiness", timeout=2).json()
        except httpx.HTTPError:
            return False
        return bool(ready.get("prefill_nodes") == 1 and ready.get("decode_nodes") == 1)

    wait_until(joined, 60, "both nodes to join the master")

    # 4.1: the guide's curl, as written
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    body = '{"inputs": "What is AI?", "parameters":{"max_new_tokens":17, "frequency_penalty":1}}'
    done = subprocess.run(
        ["curl", "-s", f"{master}/generate", "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    answer = json.loads(done.stdout)
    # the simulated model repeats the prompt and ends (README, "Using it")
    assert answer["generated_text"] == ["What is AI?What is AI?"], answer

    # 4.2: python benchmark_client.py --num_clients 100 --input_num 2000 \
    #        --tokenizer_path /path/DeepSeek-R1/ --url http://127.0.0.1:8088/generate_stream
    bench = subprocess.run(
        [sys.executable, "-m", "benchmark_client", "--num_clients", "10", "--input_num", "20",
         "--input_len", "64", "--output_len", "16", "--tokenizer_path", f"{DEFAULT_MODEL_DIR}/",
         "--url", f"{master}/generate_stream", "--no_progress"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    for line in ("Total QPS: ", "Avg Input Length: ", "decode_token_time (ms)"):
        assert line in bench.stdout
