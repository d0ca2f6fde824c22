"""Each node's LightLLM version, from the registrations LightLLM's own nodes send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdmaster.nodes.pool import NodeInfo, RegistrationError

ALL = frozenset({"v1.1.0", "fc72ffa", "v1.2.0"})


def registration(golden_root: Path, version: str, role: str) -> dict:
    return json.loads((golden_root / version / f"register_{role}.json").read_text())


@pytest.mark.parametrize("version", sorted(ALL))
@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_golden_registrations_name_their_version(
    golden_root: Path, version: str, role: str
) -> None:
    info = NodeInfo.from_registration(registration(golden_root, version, role), ALL)
    assert (info.version, info.mode) == (version, role)
    if version == "v1.2.0":
        assert info.group == ("v1.2.0", "nccl") and info.rpyc_port is None
        assert info.max_req_total_len == 163840
    else:
        assert info.group == (version, None) and info.max_req_total_len is None


def test_a_version_the_master_does_not_accept_is_refused(golden_root: Path) -> None:
    frame = registration(golden_root, "v1.2.0", "decode")
    with pytest.raises(RegistrationError, match="runs LightLLM v1.2.0; this master accepts"):
        NodeInfo.from_registration(frame, frozenset({"v1.1.0"}))


def test_v12_registration_needs_a_transport_and_a_length_limit(golden_root: Path) -> None:
    frame = registration(golden_root, "v1.2.0", "prefill")
    frame["start_args"]["pd_trans_mode"] = "rdma"
    with pytest.raises(RegistrationError, match="pd_trans_mode must be nccl or nixl"):
        NodeInfo.from_registration(frame, ALL)
    frame["start_args"].update(pd_trans_mode="nixl", max_req_total_len=None)
    with pytest.raises(RegistrationError, match="max_req_total_len must be a positive integer"):
        NodeInfo.from_registration(frame, ALL)


def test_a_trimmed_registration_is_the_older_release_accepted(golden_root: Path) -> None:
    frame = registration(golden_root, "v1.1.0", "prefill")
    frame["start_args"] = {k: frame["start_args"][k] for k in ("host", "pd_decode_rpyc_port")}
    assert NodeInfo.from_registration(frame, ALL).version == "v1.1.0"
    assert NodeInfo.from_registration(frame, frozenset({"fc72ffa"})).version == "fc72ffa"
