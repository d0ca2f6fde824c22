from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("PDCTL_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def golden_root() -> Path:
    root = shared_dir() / "lightllm_golden"
    if not root.is_dir():
        pytest.skip(f"LightLLM golden messages not found at {root} (../shared is absent)")
    return root
