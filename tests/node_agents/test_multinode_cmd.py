"""Multi-node instances' command lines, flag by flag against LightLLM's multi-node scripts.

LightLLM's test/start_scripts/multi_node_ep_node{0,1}.sh run the same command on both hosts::

    MOE_MODE=EP LOADWORKER=18 python -m lightllm.server.api_server --port 8088 \\
      --model_dir /path/DeepSeek-R1 --tp 16 --dp 16 --enable_fa3 \\
      --nnodes 2 --node_rank 0|1 --nccl_host $nccl_host --nccl_port 2732

``--tp/--dp`` are the whole instance's; each host adds its rank and rank 0's address.
"""

from __future__ import annotations

from typing import Any

import pytest

from node_agents.config import ConfigError, parse_config
from node_agents.lightllm_cmd import engine_command, flag_groups, with_multinode

EP16 = {
    "role": "prefill",
    "model_dir": "/path/DeepSeek-R1",
    "port": 8019,
    "nccl_port": 2732,
    "tp": 16,
    "dp": 16,
    "nnodes": 2,
    "nccl_host": "10.0.0.11",
    "config_server": "10.0.0.1:60088",
    "kv_trans_use_p2p": False,
    "python": "python",
}


@pytest.mark.parametrize(("rank", "host"), [(0, "10.0.0.11"), (1, "10.0.0.12")])
def test_every_rank_runs_the_scripts_command_plus_its_rank(rank: int, host: str) -> None:
    cmd = engine_command(parse_config({**EP16, "host": host, "node_rank": rank}))
    flags = dict(flag_groups(cmd.argv[3:]))
    assert cmd.env == {"MOE_MODE": "EP", "LOADWORKER": "18"}
    assert {k: flags[k] for k in ("--tp", "--dp", "--nccl_port", "--enable_fa3")} == {
        "--tp": "16",
        "--dp": "16",
        "--nccl_port": "2732",
        "--enable_fa3": None,
    }
    assert flags["--nnodes"] == "2"
    assert flags["--node_rank"] == str(rank)
    assert flags["--nccl_host"] == "10.0.0.11"  # rank 0's address on every host
    assert flags["--host"] == host


def test_one_node_gets_no_multinode_flags_and_pass_through_args_stay_last() -> None:
    single = {**EP16, "host": "10.0.0.11", "nnodes": 1, "tp": 8, "dp": 8}
    assert "--nnodes" not in engine_command(parse_config(single)).argv
    config = parse_config({**EP16, "host": "10.0.0.12", "node_rank": 1, "extra_args": ["--x"]})
    argv = with_multinode(["python", "-m", "m", "--a", "1", "--x"], config)
    assert argv[-1] == "--x" and argv[-3:-1] == ["--nccl_host", "10.0.0.11"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"node_rank": 2}, "node_rank = 2"),
        ({"nccl_host": None}, "nccl_host = None"),
        ({"nccl_host": "not a host!"}, "nccl_host = 'not a host!'"),
        ({"tp": 12, "dp": 12, "nnodes": 8}, "tp = 12"),
        ({"config_server": None, "pd_master": "10.0.0.1:60011"}, "config_server = None"),
        ({"nnodes": 0}, "nnodes = 0"),
    ],
)
def test_bad_multinode_settings_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        parse_config({**EP16, "host": "10.0.0.12", "node_rank": 1, **change})


def test_the_group_id_defaults_to_role_and_rank_zeros_nccl_address() -> None:
    config = parse_config({**EP16, "host": "10.0.0.12", "node_rank": 1})
    assert config.group_id == "prefill-10.0.0.11-2732"
