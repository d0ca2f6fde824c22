"""Hostile peers: each attack of issue 13 against real processes on loopback, as a table.

``python -m benchmarks.hostile_peers [--smoke]`` starts a config server and a master
registered with it (under ``ulimit -n 1024``), one prefill and one decode simulated node
(and whatever an attack needs besides), runs every attack in ``ATTACKS`` and prints, per
attack: attempts, how many were refused, and whether every process still serves (a
``/generate`` answers 200, ``/health`` within 1 s, the config server lists the master at
its own address). Results go to ``benchmarks/results/hostile_peers.json``.
``tests/integration/test_hostile.py`` runs the same attacks and asserts on their outcomes.

An attack is ``async def attack(target: Target) -> Outcome`` (``benchmarks.attacks.target``),
in the module of its family under ``benchmarks/attacks/``; append it to ``ATTACKS``.
Attackers connect from 127.0.0.2 (a different address than every node's), as a host on
the cluster network would.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

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
from benchmarks.attacks.target import Attack, Outcome, Target, start_target, still_serving
from benchmarks.attacks.wire_frames import (
    kv_status_json_bombs,
    pickled_frame_bombs,
    registration_json_bombs,
)
from benchmarks.common import parser, print_table, workdir, write_json

ATTACKS: list[Attack] = [
    pickled_frame_bombs,
    registration_json_bombs,
    kv_status_json_bombs,
    node_id_takeover,
    forged_kv_status,
    poisoned_load_report,
    endless_token_load,
    dripping_token_load,
    outside_allow_cidr,
    master_id_on_websocket,
    master_id_on_v1,
    id_range_flood,
    id_range_wait,
    slowloris,
    bad_path_parameters,
    heavy_prompts,
    *PROMPT_API_ATTACKS,
    message_list_flood,
]


async def run_attack(attack: Attack, target: Target) -> Outcome:
    outcome = await attack(target)
    outcome.serving = await still_serving(target)
    return outcome


def main() -> None:
    parser(__doc__ or "").parse_args()
    procs = workdir()
    outcomes = []
    try:
        target = start_target(procs)
        for attack in ATTACKS:
            started = time.monotonic()
            outcome = asyncio.run(run_attack(attack, target))
            outcome.details["seconds"] = round(time.monotonic() - started, 2)
            outcomes.append(outcome)
    finally:
        procs.stop_all()
    headers = ["attack", "attempts", "refused", "still serving"]
    print_table("Hostile peers (issue 13)", headers, [o.row for o in outcomes])
    write_json("hostile_peers", {"attacks": [asdict(o) for o in outcomes]})


if __name__ == "__main__":
    main()
