"""Hostile peers (issue 13): each attack of ``benchmarks.hostile_peers`` against real
processes on loopback, with the safe behaviour asserted; the last test prints the table.

One config server and one master (under ``ulimit -n 1024``) with a prefill and a decode
node serve every attack in turn (the attacks leave them serving, which each test checks),
so the set stays fast.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.attacks.heavy_prompts import heavy_prompts, message_list_flood
from benchmarks.attacks.identity import (
    forged_kv_status,
    id_range_flood,
    master_id_on_v1,
    master_id_on_websocket,
    node_id_takeover,
    outside_allow_cidr,
)
from benchmarks.attacks.load_signals import (
    dripping_token_load,
    endless_token_load,
    poisoned_load_report,
)
from benchmarks.attacks.prompt_apis import PROMPT_API_ATTACKS
from benchmarks.attacks.request_values import bad_path_parameters
from benchmarks.attacks.slow_peers import id_range_wait, slowloris
from benchmarks.attacks.target import Attack, Outcome, Target, start_target
from benchmarks.attacks.wire_frames import (
    JSON_BOMBS,
    PICKLE_BOMBS,
    kv_status_json_bombs,
    pickled_frame_bombs,
    registration_json_bombs,
)
from benchmarks.common import print_table
from benchmarks.hostile_peers import run_attack
from pdlocal.cluster import ProcGroup

OUTCOMES: list[Outcome] = []


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    group = ProcGroup(Path(tempfile.mkdtemp(prefix="pdctl-hostile-")))
    try:
        yield start_target(group)
    finally:
        group.stop_all()


def run(attack: Attack, target: Target) -> Outcome:
    outcome = asyncio.run(run_attack(attack, target))
    OUTCOMES.append(outcome)
    assert outcome.serving, target.procs.dump_logs()
    assert "Traceback" not in target.master_log()
    return outcome


def test_pickled_build_hash_and_memo_bombs_are_refused_at_no_cost(target: Target) -> None:
    outcome = run(pickled_frame_bombs, target)
    assert outcome.refused == outcome.attempts == len(PICKLE_BOMBS) + 2
    assert outcome.details["slowest_health_s"] < 1.0
    assert outcome.details["rss_growth_mb"] < 100
    assert "closed /pd_register from 127.0.0.2" in target.master_log()


def test_json_bombs_on_pd_register_close_the_socket_with_a_code(target: Target) -> None:
    outcome = run(registration_json_bombs, target)
    assert outcome.refused == outcome.attempts == len(JSON_BOMBS)
    assert "refused node registration from 127.0.0.2" in target.master_log()


def test_json_bombs_on_kv_move_status_close_the_socket_with_a_code(target: Target) -> None:
    outcome = run(kv_status_json_bombs, target)
    assert outcome.refused == outcome.attempts
    assert "bad kv_move_status frame from 127.0.0.2" in target.master_log()


def test_a_live_node_id_cannot_be_taken_from_another_address(target: Target) -> None:
    outcome = run(node_id_takeover, target)
    assert outcome.refused == outcome.attempts == 2
    assert outcome.details["stream"], "the live node's stream failed"


def test_forged_kv_move_status_releases_no_request(target: Target) -> None:
    outcome = run(forged_kv_status, target)
    assert outcome.details["request_status"] == 504  # kv_move_timeout: nothing was released
    assert outcome.refused == outcome.attempts


def test_requests_keep_succeeding_under_a_poisoned_load_report(target: Target) -> None:
    outcome = run(poisoned_load_report, target)
    assert outcome.details["pages_and_requests_ok"]
    assert outcome.refused == outcome.attempts


@pytest.mark.parametrize("attack", [endless_token_load, dripping_token_load])
def test_a_hostile_token_load_answer_costs_one_short_poll(target: Target, attack: Attack) -> None:
    outcome = run(attack, target)
    assert outcome.attempts >= 2, "the master did not poll the node's own address"
    assert outcome.refused == outcome.attempts
    assert outcome.details["other_nodes_load_fresh"]
    assert outcome.details["master_rss_growth_mb"] < 100


def test_node_sockets_from_outside_allow_cidr_are_refused(target: Target) -> None:
    outcome = run(outside_allow_cidr, target)
    assert outcome.refused == outcome.attempts == 4


def test_a_live_master_id_cannot_be_taken_over_the_websocket(target: Target) -> None:
    outcome = run(master_id_on_websocket, target)
    assert outcome.refused == outcome.attempts == 3  # and still_serving: listed at its address


def test_a_live_master_cannot_be_repointed_or_removed_with_the_register_token(
    target: Target,
) -> None:
    outcome = run(master_id_on_v1, target)
    assert outcome.details["statuses"] == [409, 409]


def test_id_ranges_are_limited_to_allow_cidr_or_the_register_token(target: Target) -> None:
    outcome = run(id_range_flood, target)
    assert outcome.refused == outcome.attempts
    assert outcome.details["with_register_token"] == 200
    assert outcome.details["from_allowed_network"] == 200


def test_the_id_range_wait_ends_at_the_request_deadline(target: Target) -> None:
    outcome = run(id_range_wait, target)
    assert outcome.details["status"] == 504  # the request's 3 s deadline ended it
    assert outcome.details["seconds"] < 3.0 + 5  # not the stalled config server's; late by load


def test_normal_requests_get_through_during_slowloris(target: Target) -> None:
    outcome = run(slowloris, target)
    # one at a time for 3 s: how many fit depends on the machine; each must get through
    assert outcome.details["normal_requests"] >= 1
    assert outcome.details["normal_ok"] == outcome.details["normal_requests"]
    assert outcome.refused > 0  # the slow ones were closed


def test_bad_path_parameters_get_a_4xx(target: Target) -> None:
    outcome = run(bad_path_parameters, target)
    assert outcome.refused == outcome.attempts, outcome.details


def test_heavy_prompts_are_refused_without_stalling_other_clients(target: Target) -> None:
    outcome = run(heavy_prompts, target)
    assert outcome.refused == outcome.attempts > 0
    assert outcome.details["statuses"] == [400, 413]
    assert outcome.details["health_slowest_s"] < 1.0  # main: no answer within 10 s


@pytest.mark.parametrize("attack", PROMPT_API_ATTACKS, ids=lambda a: a.__name__)
def test_every_api_refuses_oversized_prompts_and_tokenizes_big_ones_off_the_loop(
    target: Target, attack: Attack
) -> None:
    outcome = run(attack, target)
    details = outcome.details
    assert details["oversized_named"] == details["oversized"] > 0  # 413 naming the field
    assert details["loop_requests"] >= 2
    # refused as too many tokens, once tokenized; the token counters answer them
    assert details["statuses"] == ([200] if "count" in outcome.attack else [400])
    assert details["health_slowest_s"] < 1.0
    assert details["stream_ok"], details


def test_long_message_lists_are_worked_off_the_loop(target: Target) -> None:
    outcome = run(message_list_flood, target)
    assert outcome.refused == outcome.attempts >= 2
    assert outcome.details["statuses"] == [413]
    assert outcome.details["rendered"] == outcome.attempts  # parsed and rendered, then refused
    assert outcome.details["health_slowest_s"] < 1.0


def test_zz_attack_table() -> None:
    headers = ["attack", "attempts", "refused", "still serving"]
    print_table("Hostile peers", headers, [o.row for o in OUTCOMES])
