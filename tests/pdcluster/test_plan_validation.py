"""Every rule of ``pd-cluster plan``: a bad file is refused with a line naming key and value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pdcluster.cli import main
from pdcluster.layout import plan
from pdcluster.spec import PlanError, parse_spec


def good() -> dict[str, Any]:
    hosts = [
        {"name": "cs0", "address": "10.0.0.11", "role": "config_server"},
        {"name": "m0", "address": "10.0.0.21", "role": "master"},
    ]
    hosts += [
        {"name": f"p{i}", "address": f"10.0.1.{11 + i}", "role": "prefill", "gpus": 8}
        for i in range(4)
    ]
    hosts += [
        {"name": f"d{i}", "address": f"10.0.2.{11 + i}", "role": "decode", "gpus": 8}
        for i in range(2)
    ]
    return {
        "name": "test",
        "model": {"dir": "/models/DeepSeek-R1", "routed_experts": 256},
        "pools": {
            "prefill": {"ep": 32, "redundant_experts": 32, "port": 8019, "nccl_port": 2732},
            "decode": {"ep": 16, "redundant_experts": 16, "port": 8121, "nccl_port": 12322},
        },
        "hosts": hosts,
    }


def problems(change: Any) -> list[str]:
    data = copy.deepcopy(good())
    change(data)
    with pytest.raises(PlanError) as caught:
        plan(parse_spec(data))
    return caught.value.problems


def test_the_good_file_plans() -> None:
    result = plan(parse_spec(good()))
    assert [(i.group_id, i.nnodes) for i in result.instances] == [
        ("test-prefill-0", 4),
        ("test-decode-0", 2),
    ]
    assert result.experts["prefill"].per_gpu == 9 and result.experts["decode"].per_gpu == 17


def set_key(*path: Any, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


RULES = [
    # divisibility: an instance is whole hosts
    (set_key("pools", "decode", "ep", value=12),
     "pools.decode.ep = 12: must be a multiple of gpus_per_node (8)"),
    # experts per GPU = (routed + redundant) / ep must be whole
    (set_key("pools", "prefill", "redundant_experts", value=30),
     "pools.prefill.redundant_experts = 30: 256 routed + 30 redundant experts over ep = 32"),
    # enough hosts
    (set_key("pools", "prefill", "instances", value=2),
     "pools.prefill.instances = 2: needs 8 prefill hosts (2 x 4 per instance), the file has 4"),
    # enough GPUs per host
    (set_key("hosts", 3, "gpus", value=4), "hosts[3].gpus = 4: pool prefill runs 8 GPUs per node"),
    # port clashes: with the agent API, LightLLM's multi-node hand-shake, the decode rpyc port
    (set_key("pools", "prefill", "nccl_port", value=9019),
     "pools.prefill.nccl_port = 9019: clashes with the agent API port (pools.prefill.port + 1000)"),
    (set_key("pools", "prefill", "nccl_port", value=12446),
     "pools.prefill.nccl_port = 12446: clashes with LightLLM's multi-node hand-shake port 12446"),
    (set_key("pools", "decode", "nccl_port", value=42000),
     "pools.decode.nccl_port = 42000: clashes with LightLLM's --pd_decode_rpyc_port (42000)"),
    (set_key("pools", "decode", "port", value=65000),
     "pools.decode.port = 65000: the agent API port (port + 1000) passes 65535"),
    # one role per host
    (set_key("hosts", 7, "address", value="10.0.1.11"),
     "hosts[7].address = '10.0.1.11': already hosts[2] (p0); a host has one role"),
    (set_key("hosts", 7, "name", value="p0"), "hosts[7].name = 'p0': already hosts[2]"),
    (set_key("pools", "decode", "hosts", value=["d0", "p0"]),
     "pools.decode.hosts[1] = 'p0': host p0 has role prefill"),
    (set_key("pools", "decode", "hosts", value=["d0", "d9"]),
     "pools.decode.hosts[1] = 'd9': no such host"),
    (set_key("hosts", 7, "role", value="gpu"), "hosts[7].role = 'gpu': Input should be"),
    # the control plane
    (set_key("hosts", 1, "role", value="config_server"), "hosts: no host has role = 'master'"),
    (set_key("hosts", 1, "role", value="config_server"),
     "config_server.etcd_endpoints = []: 2 config_server hosts share their registry only"),
    (set_key("config_server", value={"address": "vip"}),
     "config_server.address = 'vip': must be host:port"),
    (set_key("config_server", value={"etcd_endpoints": ["etcd"]}),
     "config_server.etcd_endpoints = ['etcd']: 'etcd' must be host:port"),
    # the file itself
    (set_key("pools", "prefill", "tpp", value=8), "pools.prefill.tpp: unknown key (value 8)"),
    (set_key("lightllm_version", value="v9"), "lightllm_version = 'v9': must be one of"),
    (set_key("hosts", 0, "address", value="not an address!"),
     "hosts[0].address = 'not an address!': must be an IP address or a host name"),
    (lambda d: d["pools"].pop("decode"), "pools.decode: required section is missing"),
    (set_key("name", value="Bad_Name"), "name = 'Bad_Name': String should match pattern"),
    # what the agents themselves refuse (their own validation, under the host's key)
    (set_key("hosts", 2, "address", value="127.0.0.1"),
     "hosts[2] (p0): invalid config: host = '127.0.0.1': LightLLM nodes refuse 127.0.0.1"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), RULES, ids=[r[1][:40] for r in RULES])
def test_each_rule_names_its_key_and_value(change: Any, expected: str) -> None:
    found = problems(change)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    def two(data: dict[str, Any]) -> None:
        data["pools"]["decode"]["ep"] = 17
        data["hosts"][3]["gpus"] = 4

    found = problems(two)
    assert sorted(p.split(":")[0] for p in found) == ["hosts[3].gpus = 4", "pools.decode.ep = 17"]


def test_the_cli_exits_2_with_the_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('name = "x"\n[model]\ndir = "/m"\n[[hosts]]\nname = "a"\n')
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "hosts[0].address: required key is missing" in err
    assert not (tmp_path / "out").exists()


def test_lightllm_cannot_place_ep144_redundancy_evenly_and_the_plan_says_so() -> None:
    data = good()
    data["pools"]["decode"] = {**data["pools"]["decode"], "ep": 144, "redundant_experts": 32}
    data["hosts"] += [
        {"name": f"d{i}", "address": f"10.0.2.{11 + i}", "role": "decode", "gpus": 8}
        for i in range(2, 18)
    ]
    result = plan(parse_spec(data))
    assert result.experts["decode"].per_gpu == 2
    assert result.experts["decode"].redundant_per_rank is None
    assert any("ep = 144 cannot" in w for w in result.warnings)


def test_several_config_servers_without_one_address_is_a_warning() -> None:
    data = good()
    data["hosts"][1]["role"] = "config_server"
    data["hosts"].append({"name": "m1", "address": "10.0.0.22", "role": "master"})
    data["config_server"] = {"etcd_endpoints": ["10.0.0.31:2379"]}
    result = plan(parse_spec(data))
    assert result.config_server_address == "10.0.0.11:60088"
    assert any("set config_server.address" in w for w in result.warnings)
    data["config_server"]["address"] = "config.internal:60088"
    result = plan(parse_spec(data))
    assert result.agents["p0"].config_server == "config.internal:60088" and not result.warnings
