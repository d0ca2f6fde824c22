"""A rank's ``start_args`` place it in its multi-node instance; a peer's odd values do not."""

from __future__ import annotations

from typing import Any

import pytest

from pdmaster.nodes.instances import instance_of

RANK = {"nnodes": 4, "node_rank": 2, "nccl_host": "10.0.1.11", "nccl_port": 2732}


def test_a_rank_names_its_instance_by_role_and_rank_zeros_nccl_address() -> None:
    assert instance_of("prefill", RANK) == {
        "id": "prefill-10.0.1.11:2732",
        "nnodes": 4,
        "node_rank": 2,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"nnodes": 1},  # a single-node instance: no group
        {"nnodes": True},
        {"nnodes": "4"},
        {"nnodes": 10**9},
        {"node_rank": None},
        {"nccl_host": ["x"]},
        {"nccl_host": "h" * 300},
        {"nccl_port": 2732.5},
    ],
)
def test_missing_or_odd_values_mean_no_instance(change: dict[str, Any]) -> None:
    assert instance_of("decode", {**RANK, **change}) is None
