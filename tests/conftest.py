from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdlocal.cluster import ProcGroup

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("PDCTL_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def golden_root() -> Path:
    root = shared_dir() / "lightllm_golden"
    if not root.is_dir():
        pytest.skip(f"LightLLM golden messages not found at {root} (../shared is absent)")
    return root


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcGroup]:
    group = ProcGroup(tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.dump_logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
