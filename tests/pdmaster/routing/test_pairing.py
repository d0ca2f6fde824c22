"""A prefill node pairs only with decode nodes of its LightLLM release and v1.2.0 transport."""

from __future__ import annotations

import itertools

import pytest

from pdmaster.errors import BadRequest, NoNodeAvailable
from pdmaster.nodes.pool import NodeConnection, NodeInfo, NodePool
from pdmaster.routing.policies import RequestView, make_policy
from pdmaster.routing.selection import PairSelector

IDS = itertools.count(1)


async def _send(_: bytes) -> None:
    pass


def node(
    pool: NodePool, mode: str, version: str, trans: str | None = None, max_len: int | None = None
) -> NodeConnection:
    n = next(IDS)
    info = NodeInfo(n, mode, f"127.0.0.{n}:8000", f"127.0.0.{n}", None, {}, version, trans, max_len)  # type: ignore[arg-type]
    return pool.connect(info, _send, f"127.0.0.{n}")


def selector(pool: NodePool) -> PairSelector:
    return PairSelector(
        pool, make_policy("round_robin", 100_000), make_policy("round_robin", 100_000)
    )


def test_every_pair_is_of_one_release_and_transport() -> None:
    pool = NodePool(lambda: 0.0)
    node(pool, "prefill", "v1.1.0")
    node(pool, "decode", "v1.1.0")
    node(pool, "prefill", "v1.2.0", "nccl", 4096)
    node(pool, "decode", "v1.2.0", "nccl", 4096)
    node(pool, "prefill", "v1.2.0", "nixl", 4096)  # no nixl decode node: never chosen
    node(pool, "decode", "fc72ffa")  # no fc72ffa prefill node: never chosen
    pick = selector(pool)
    seen = set()
    for _ in range(12):
        prefill, decode = pick.pick_pair(RequestView(10, 20), total_len=30)
        assert decode is not None and prefill.info.group == decode.info.group
        seen.add(prefill.info.group)
    assert seen == {("v1.1.0", None), ("v1.2.0", "nccl")}


def test_one_token_requests_need_a_decode_node_only_on_v12() -> None:
    pool = NodePool(lambda: 0.0)
    node(pool, "prefill", "v1.1.0")
    prefill, decode = selector(pool).pick_pair(RequestView(10, 1), total_len=11)
    assert prefill.info.version == "v1.1.0" and decode is None
    lone = NodePool(lambda: 0.0)
    node(lone, "prefill", "v1.2.0", "nccl", 4096)
    with pytest.raises(NoNodeAvailable, match="no decode node is connected"):
        selector(lone).pick_pair(RequestView(10, 1), total_len=11)


def test_a_request_past_every_nodes_max_req_total_len_is_a_400() -> None:
    pool = NodePool(lambda: 0.0)
    node(pool, "prefill", "v1.2.0", "nccl", 100)
    node(pool, "decode", "v1.2.0", "nccl", 100)
    node(pool, "decode", "v1.2.0", "nccl", 1000)
    pick = selector(pool)
    with pytest.raises(BadRequest, match="exceed max_req_total_len 100"):
        pick.pick_pair(RequestView(10, 200), total_len=210)
    node(pool, "prefill", "v1.2.0", "nccl", 1000)
    for _ in range(3):
        prefill, decode = pick.pick_pair(RequestView(10, 200), total_len=210)
        assert decode is not None
        assert prefill.info.max_req_total_len == decode.info.max_req_total_len == 1000


def test_no_decode_node_of_a_prefill_nodes_release_is_a_503() -> None:
    pool = NodePool(lambda: 0.0)
    node(pool, "prefill", "v1.2.0", "nccl", 4096)
    node(pool, "decode", "v1.1.0")
    with pytest.raises(NoNodeAvailable, match="different LightLLM versions"):
        selector(pool).pick_pair(RequestView(10, 20), total_len=30)


def test_a_request_pairs_only_with_a_release_that_can_carry_its_fields() -> None:
    pool = NodePool(lambda: 0.0)
    node(pool, "prefill", "v1.1.0")
    node(pool, "decode", "v1.1.0")
    pick = selector(pool)
    seed = {"v1.1.0": "seed", "fc72ffa": "seed"}  # their requests have no seed
    with pytest.raises(BadRequest, match=r"^seed: the connected prefill nodes run LightLLM v1\.1"):
        pick.pick_pair(RequestView(10, 20), total_len=30, refused=seed)
    node(pool, "prefill", "v1.2.0", "nccl", 4096)
    with pytest.raises(BadRequest, match=r"^seed: the connected decode nodes run LightLLM v1\.1"):
        pick.pick_pair(RequestView(10, 20), total_len=30, refused=seed)
    node(pool, "decode", "v1.2.0", "nccl", 4096)
    for _ in range(4):  # round robin would give v1.1.0 every other time
        prefill, decode = pick.pick_pair(RequestView(10, 20), total_len=30, refused=seed)
        assert decode is not None
        assert prefill.info.version == decode.info.version == "v1.2.0"
    groups = {pick.pick_pair(RequestView(10, 20), total_len=30)[0].info.group for _ in range(4)}
    assert groups == {("v1.1.0", None), ("v1.2.0", "nccl")}  # a plain request pairs with both


def test_a_retry_avoids_the_nodes_it_tried_unless_no_other_is_left() -> None:
    pool = NodePool(lambda: 0.0)
    prefills = [node(pool, "prefill", "v1.1.0") for _ in range(2)]
    decodes = [node(pool, "decode", "v1.1.0") for _ in range(2)]
    pick = selector(pool)
    for _ in range(4):  # round robin would take each node every other time
        prefill, decode = pick.pick_pair(RequestView(10, 20), [prefills[0], decodes[1]], 30)
        assert (prefill, decode) == (prefills[1], decodes[0])
    tried = [*prefills, *decodes]  # every node tried: any may be taken again
    chosen = {pick.pick_pair(RequestView(10, 20), tried, 30) for _ in range(4)}
    assert chosen == {(prefills[0], decodes[0]), (prefills[1], decodes[1])}
