"""The other routers of the field, run in PD mode on loopback for ``vs_gateways``.

SGLang's model gateway (``sglang-router``) and vLLM's router (``vllm-router``), both Rust,
come with ``pip install -e .[peers]``; each routes to one prefill and one decode
``mock_worker`` over HTTP, as it would to real workers.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import httpx

from pdlocal.cluster import Proc, ProcGroup, free_port, wait_until

QUIET_RUST = {"sglang": ["--log-level", "error"], "vllm": ["--log-level", "error"]}
MODULES = {"sglang": "sglang_router.launch_router", "vllm": "vllm_router.launch_router"}
PD_FLAG = {"sglang": "--pd-disaggregation", "vllm": "--vllm-pd-disaggregation"}


def installed() -> list[str]:
    """The peers whose packages are installed (``.[peers]``)."""
    return [
        name for name, module in MODULES.items() if importlib.util.find_spec(module.split(".")[0])
    ]


@dataclass
class Workers:
    prefill: str
    decode: str


def mock_workers(group: ProcGroup, step_ms: float, model: str) -> Workers:
    urls = []
    for role in ("prefill", "decode"):
        port = free_port()
        group.python(
            f"mock-{role}",
            "-m",
            "benchmarks.mock_worker",
            "--port",
            str(port),
            "--role",
            role,
            "--step_ms",
            str(step_ms),
            "--model",
            model,
        )
        urls.append(f"http://127.0.0.1:{port}")
        wait_until(lambda: _ok(f"{urls[-1]}/health"), 20, f"the mock {role} worker")
    return Workers(*urls)


def start_router(group: ProcGroup, name: str, workers: Workers) -> tuple[Proc, str]:
    """The peer ``name`` in PD mode over ``workers``, serving completions; (proc, base URL)."""
    port = free_port()
    argv = ["-m", MODULES[name], PD_FLAG[name], "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--prefill", workers.prefill, "--decode", workers.decode]
    argv += ["--policy", "round_robin", "--prometheus-port", str(free_port()), *QUIET_RUST[name]]
    proc = group.python(f"{name}-router", *argv)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _serves(url), 60, f"the {name} router to serve a completion")
    return proc, url


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _serves(url: str) -> bool:
    body = {"model": "mock", "prompt": "hi", "max_tokens": 2, "stream": False}
    try:
        return httpx.post(f"{url}/v1/completions", json=body, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
