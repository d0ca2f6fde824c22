from __future__ import annotations

import random

import pytest

from pdmaster.routing.policies import (
    POLICY_NAMES,
    LeastLoadPolicy,
    NodeView,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    RandomPolicy,
    RequestView,
    RoundRobinPolicy,
    make_policy,
    prefix_blocks,
    reads_prefixes,
)

CAPACITY = 1000


def views(*loads: int) -> list[NodeView]:
    return [NodeView(node_id=i, in_flight_tokens=t) for i, t in enumerate(loads)]


REQ = RequestView(prompt_tokens=100, max_new_tokens=10)


def test_round_robin_cycles_in_node_id_order() -> None:
    policy = RoundRobinPolicy()
    nodes = views(0, 0, 0)
    assert [policy.select(nodes, REQ).node_id for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_random_only_picks_candidates() -> None:
    policy = RandomPolicy(random.Random(1))
    picked = {policy.select(views(0, 0), REQ).node_id for _ in range(50)}
    assert picked == {0, 1}


def test_least_load_picks_fewest_tokens_in_flight() -> None:
    assert LeastLoadPolicy(CAPACITY).select(views(500, 20, 300), REQ).node_id == 1


def test_least_load_counts_reported_usage_from_other_masters() -> None:
    nodes = [
        NodeView(0, in_flight_tokens=100, reported_usage=0.9),  # 900 tokens by other masters
        NodeView(1, in_flight_tokens=300, reported_usage=0.3),
    ]
    assert LeastLoadPolicy(CAPACITY).select(nodes, REQ).node_id == 1


def test_stale_reports_are_not_views_inputs() -> None:
    # the pool drops stale reports (reported_usage None): only our own counts remain
    nodes = [NodeView(0, in_flight_tokens=100), NodeView(1, in_flight_tokens=300)]
    assert LeastLoadPolicy(CAPACITY).select(nodes, REQ).node_id == 0


def test_power_of_two_never_picks_the_most_loaded_of_two() -> None:
    policy = PowerOfTwoPolicy(CAPACITY, random.Random(7))
    assert {policy.select(views(10, 900), REQ).node_id for _ in range(20)} == {0}


def test_power_of_two_spreads_over_equal_nodes() -> None:
    policy = PowerOfTwoPolicy(CAPACITY, random.Random(7))
    assert {policy.select(views(0, 0, 0, 0), REQ).node_id for _ in range(100)} == {0, 1, 2, 3}


def _prefix_request(prefix: int, suffix: int) -> RequestView:
    ids = [prefix] * 64 + [1000 + suffix] * 16
    return RequestView(80, 10, prefix_blocks(ids))


def test_prefix_affinity_returns_to_the_node_that_saw_the_prefix() -> None:
    policy = PrefixAffinityPolicy(CAPACITY, load_factor=2.0, slack_tokens=0)
    nodes = views(10, 10, 10)
    first = policy.select(nodes, _prefix_request(7, 0)).node_id
    assert all(policy.select(nodes, _prefix_request(7, i)).node_id == first for i in range(1, 5))


def test_prefix_affinity_gives_up_on_an_overloaded_node() -> None:
    policy = PrefixAffinityPolicy(CAPACITY, load_factor=1.5, slack_tokens=0)
    assert policy.select(views(100, 100), _prefix_request(7, 0)).node_id == 0
    # node 0 has the prefix but is now far above 1.5 x the least loaded node
    assert policy.select(views(400, 100), _prefix_request(7, 1)).node_id == 1
    # within the bound it keeps the affinity
    assert policy.select(views(140, 100), _prefix_request(7, 2)).node_id == 0


def test_prefix_affinity_without_a_match_is_least_load() -> None:
    policy = PrefixAffinityPolicy(CAPACITY)
    assert policy.select(views(50, 5, 70), _prefix_request(3, 0)).node_id == 1


def test_prefix_blocks_chain_whole_blocks_only() -> None:
    a = prefix_blocks(list(range(40)))
    b = prefix_blocks(list(range(32)) + [99] * 8)
    assert len(a) == 2 and a == b  # the 8-token tail is not a block
    assert prefix_blocks(list(range(16)) + [5] * 16)[0] == a[0]
    assert prefix_blocks([9] + list(range(1, 32)))[0] != a[0]


def test_make_policy_names_unknown_policies() -> None:
    assert isinstance(make_policy("least_load", CAPACITY), LeastLoadPolicy)
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        make_policy("fastest", CAPACITY)


def test_only_prefix_affinity_reads_prefix_blocks() -> None:
    assert reads_prefixes("round_robin", "prefix_affinity")
    assert reads_prefixes("prefix_affinity", "least_load")
    for name in POLICY_NAMES:
        if name != "prefix_affinity":
            assert not reads_prefixes(name, name)
