"""A fake ``nvidia-cuda-mps-control`` that tests put on PATH; it records every call.

Each call appends ``{"argv": [...], "stdin": "..."}`` as a JSON line to ``$FAKE_MPS_LOG``.
The "daemon" is the file ``$FAKE_MPS_STATE``: ``-d`` creates it, ``quit`` removes it, and a
query answers 0 only while it exists. ``$FAKE_MPS_MODE``: ``ok``; ``fail_start`` (``-d``
exits 1); ``silent_daemon`` (``-d`` exits 0 but no daemon ever answers).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path


def install(bin_dir: Path, log: Path, state: Path, mode: str = "ok") -> dict[str, str]:
    """Write the fake into ``bin_dir``; returns the environment that puts it on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-cuda-mps-control"
    script.write_text(f"#!{sys.executable}\nfrom tests.node_agents.fake_mps import main\nmain()\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    root = str(Path(__file__).resolve().parents[2])
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": root,
        "FAKE_MPS_LOG": str(log),
        "FAKE_MPS_STATE": str(state),
        "FAKE_MPS_MODE": mode,
    }


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def main() -> None:
    args = sys.argv[1:]
    stdin = "" if args else sys.stdin.read()
    with open(os.environ["FAKE_MPS_LOG"], "a") as f:
        f.write(json.dumps({"argv": args, "stdin": stdin}) + "\n")
    state = Path(os.environ["FAKE_MPS_STATE"])
    mode = os.environ.get("FAKE_MPS_MODE", "ok")
    if args == ["-d"]:
        if mode == "fail_start":
            print("An instance of this daemon is already running", file=sys.stderr)
            sys.exit(1)
        if mode != "silent_daemon":
            state.touch()
        return
    if not state.exists():
        print("Cannot find MPS control daemon process", file=sys.stderr)
        sys.exit(1)
    if stdin.strip() == "quit":
        state.unlink()
