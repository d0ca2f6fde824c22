"""A node's own load reports (with each token frame): kept when they are a usage rate, else
ignored and counted, never steering a pick."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pdmaster.nodes.pool import MAX_USAGE_RATE, NodeInfo, NodePool


async def _never(data: bytes | bytearray) -> None:
    raise AssertionError("nothing is sent here")


def pool_and_node() -> tuple[NodePool, Any, list[float]]:
    now = [100.0]
    pool = NodePool(lambda: now[0], load_max_age_s=5.0)
    info = NodeInfo(7, "decode", "127.0.0.1:9000", "127.0.0.1", 9001, {})
    return pool, pool.connect(info, _never, "127.0.0.1"), now


@pytest.mark.parametrize("rate", [0, 0.0, 0.25, 1, MAX_USAGE_RATE, int(MAX_USAGE_RATE)])
def test_a_usage_rate_is_kept_as_a_float_until_it_is_too_old(rate: float) -> None:
    pool, node, now = pool_and_node()
    pool.record_load(node, {"total_token_usage_rate": rate, "client_ip_port": "127.0.0.1:9000"})
    usage = pool.reported_usage(node)
    assert usage == rate and type(usage) is float and pool.bad_load_reports == 0
    now[0] += 5.5
    assert pool.reported_usage(node) is None


@pytest.mark.parametrize(
    "rate",
    [True, False, math.nan, math.inf, -0.5, -1, MAX_USAGE_RATE + 0.5, 10**400, "0.5", None],
)
def test_anything_else_is_ignored_and_counted(rate: Any) -> None:
    pool, node, _ = pool_and_node()
    pool.record_load(node, {"total_token_usage_rate": 0.5})
    pool.record_load(node, {"total_token_usage_rate": rate})
    pool.record_load(node, {})
    assert pool.reported_usage(node) == 0.5  # the last good report stands
    assert pool.bad_load_reports == 2
