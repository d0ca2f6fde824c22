"""The engine command, field by field against LightLLM's PD start scripts.

The scripts (LightLLM's test/start_scripts/{single,multi}_pd_master/pd_{prefill,decode}.sh)
as the protocol doc's "Node start-up" section records them: the multi-master ones leave
KV_TRANS_USE_P2P out and their decode node keeps CUDA graphs on; the single-master ones set
KV_TRANS_USE_P2P=1 and name the master by address.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from node_agents.config import parse_config
from node_agents.lightllm_cmd import MPS_START, engine_command, flag_groups
from tests.conftest import shared_dir

BASE: dict[str, Any] = {
    "model_dir": "/path/DeepSeek-R1",
    "host": "10.0.0.2",
    "tp": 8,
    "dp": 8,
    "python": "python",
}
PREFILL = {**BASE, "role": "prefill", "port": 8019, "nccl_port": 2732}
DECODE = {**BASE, "role": "decode", "port": 8121, "nccl_port": 12322}
MULTI = {"config_server": "10.0.0.1:60088", "kv_trans_use_p2p": False}
SINGLE = {"pd_master": "10.0.0.1:60011"}


def flags(argv: list[str]) -> dict[str, str | None]:
    groups = flag_groups(argv)
    assert len({f for f, _ in groups}) == len(groups), f"a flag is repeated in {argv}"
    return dict(groups)


def command(**keys: Any) -> tuple[list[str], dict[str, str]]:
    cmd = engine_command(parse_config(keys))
    return cmd.argv, cmd.env


def test_multi_master_prefill_is_the_scripts_command() -> None:
    argv, env = command(**PREFILL, **MULTI)
    assert argv[:3] == ["python", "-m", "lightllm.server.api_server"]
    assert env == {"MOE_MODE": "EP", "LOADWORKER": "18"}
    assert flags(argv[3:]) == {
        "--model_dir": "/path/DeepSeek-R1",
        "--run_mode": "prefill",
        "--host": "10.0.0.2",
        "--port": "8019",
        "--tp": "8",
        "--dp": "8",
        "--nccl_port": "2732",
        "--enable_fa3": None,
        "--disable_cudagraph": None,
        "--config_server_host": "10.0.0.1",
        "--config_server_port": "60088",
    }


def test_multi_master_decode_keeps_cuda_graphs_on() -> None:
    argv, env = command(**DECODE, **MULTI)
    assert env == {"MOE_MODE": "EP", "LOADWORKER": "18"}
    assert flags(argv[3:]) == {
        "--model_dir": "/path/DeepSeek-R1",
        "--run_mode": "decode",
        "--host": "10.0.0.2",
        "--port": "8121",
        "--tp": "8",
        "--dp": "8",
        "--nccl_port": "12322",
        "--enable_fa3": None,
        "--config_server_host": "10.0.0.1",
        "--config_server_port": "60088",
    }


@pytest.mark.parametrize("role", [PREFILL, DECODE])
def test_single_master_sets_p2p_and_names_the_master(role: dict[str, Any]) -> None:
    argv, env = command(**role, **SINGLE, disable_cudagraph=True)
    assert env == {"MOE_MODE": "EP", "KV_TRANS_USE_P2P": "1", "LOADWORKER": "18"}
    got = flags(argv[3:])
    assert (got["--pd_master_ip"], got["--pd_master_port"]) == ("10.0.0.1", "60011")
    assert "--config_server_host" not in got
    assert "--disable_cudagraph" in got


def test_p2p_is_on_by_default() -> None:
    _, env = command(**PREFILL, config_server="10.0.0.1:60088")
    assert env["KV_TRANS_USE_P2P"] == "1"


@pytest.mark.parametrize(("role", "flag"), [(PREFILL, "prefill"), (DECODE, "decode")])
def test_microbatch_overlap_flag_follows_the_role(role: dict[str, Any], flag: str) -> None:
    argv, _ = command(**role, **MULTI, microbatch_overlap=True)
    assert argv[-1] == f"--enable_{flag}_microbatch_overlap"


def test_knobs_reach_flags_and_environment() -> None:
    argv, env = command(
        **PREFILL,
        **MULTI,
        moe_mode="TP",
        loadworker=4,
        enable_fa3=False,
        disable_cudagraph=False,
        extra_args=["--max_total_token_num", "400000"],
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
    )
    assert env == {"MOE_MODE": "TP", "LOADWORKER": "4", "CUDA_VISIBLE_DEVICES": "0,1"}
    got = flags(argv[3:])
    assert "--enable_fa3" not in got and "--disable_cudagraph" not in got
    assert argv[-2:] == ["--max_total_token_num", "400000"]


def test_simulated_engine_takes_the_same_flags() -> None:
    real, real_env = command(**PREFILL, **MULTI)
    sim, sim_env = command(**PREFILL, **MULTI, engine="sim")
    assert sim[:3] == ["python", "-m", "node_agents.simengine"]
    assert sim[3:] == [*real[3:], "--lightllm_version", "v1.1.0"] and sim_env == real_env


def test_shell_form_round_trips_through_a_shell_parser() -> None:
    cmd = engine_command(parse_config({**PREFILL, **MULTI, "model_dir": "/models/with space"}))
    text = cmd.shell(mps=True)
    first, rest = text.split("\n", 1)
    assert shlex.split(first) == list(MPS_START)
    words = shlex.split(rest.replace("\\\n", " "))
    assert words == [f"{k}={v}" for k, v in cmd.env.items()] + cmd.argv


def doc_commands() -> dict[str, Any]:
    doc = shared_dir() / "lightllm_protocol.md"
    if not doc.is_file():
        pytest.skip(f"{doc} is absent")
    section = doc.read_text().split("## Node start-up", 1)[1].split("\n## ", 1)[0]
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", section)]
    prefill = next(s for s in spans if s.startswith("MOE_MODE="))
    optional = re.findall(r"\[([^\]]+)\]", prefill)
    words = shlex.split(re.sub(r"\[[^\]]+\]", "", prefill))
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    argv = [w for w in words if "=" not in w or w.startswith("-")]
    decode = next(s for s in spans if s.startswith("--run_mode decode"))
    return {"spans": spans, "env": env, "argv": argv, "optional": optional, "decode": decode}


def test_prefill_matches_the_protocol_doc_field_by_field() -> None:
    doc = doc_commands()
    assert " ".join(MPS_START) in doc["spans"]
    keys = {**PREFILL, "model_dir": "M", "host": "H", **MULTI, "config_server": "C:60088"}
    argv, env = command(**keys)
    assert env == doc["env"]
    assert argv[:3] == doc["argv"][:3]
    assert flags(argv[3:]) == flags(doc["argv"][3:])
    overlap, _ = command(**keys, microbatch_overlap=True)
    assert overlap[-1:] == doc["optional"]


def test_decode_matches_the_protocol_doc_field_by_field() -> None:
    doc = doc_commands()
    expected = flags(doc["argv"][3:]) | flags(shlex.split(doc["decode"]))
    del expected["--disable_cudagraph"]  # "(CUDA graphs on)"
    keys = {**DECODE, "model_dir": "M", "host": "H", **MULTI, "config_server": "C:60088"}
    argv, env = command(**keys)
    assert env == doc["env"]
    assert flags(argv[3:]) == expected
    overlap, _ = command(**keys, microbatch_overlap=True)
    assert [f"[{overlap[-1]}]"] == [s for s in doc["spans"] if "decode_microbatch" in s]


V12 = {"lightllm_version": "v1.2.0"}


def v12_doc_commands() -> dict[str, list[str]]:
    """The v1.2.0 doc's multi-master scripts, one shell word list per `# pd_*.sh` block."""
    doc = shared_dir() / "lightllm_protocol_v1.2.md"
    if not doc.is_file():
        pytest.skip(f"{doc} is absent")
    section = doc.read_text().split("## Node start-up in v1.2.0", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    scripts: dict[str, list[str]] = {}
    for part in re.split(r"^# (pd_\w+)\.sh.*$", block, flags=re.M)[1:]:
        if part.startswith("pd_"):
            name = part
            continue
        lines = [ln for ln in part.replace("\\\n", " ").splitlines() if "api_server" in ln]
        scripts[name] = shlex.split(lines[0])
    return scripts


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    return env, [w for w in words if "=" not in w or w.startswith("-")]


def doc_keys(role: dict[str, Any]) -> dict[str, Any]:
    return {**role, "model_dir": "M", "host": "H", "config_server": "C:60088", **V12}


def normalise(argv: list[str]) -> dict[str, str | None]:
    got = flags(argv)
    for name in ("--model_dir", "--host", "--config_server_host"):
        got[name] = "X"
    return got


def test_v12_prefill_matches_the_doc_field_by_field() -> None:
    env, argv = split_env(v12_doc_commands()["pd_prefill"])
    got, got_env = command(**doc_keys(PREFILL))
    assert got_env == env == {"LOADWORKER": "18"}
    assert got[:3] == ["python", *argv[1:3]]
    assert normalise(got[3:]) == normalise(argv[3:])


def test_v12_decode_follows_the_deployment_doc() -> None:
    env, argv = split_env(v12_doc_commands()["pd_decode"])
    assert env.pop("MOE_MODE") == "EP"  # the script's leftover; v1.2.0 never reads it
    got, got_env = command(**doc_keys(DECODE))
    assert got_env == env
    expected = normalise(argv[3:]) | {"--enable_ep_moe": None}
    assert normalise(got[3:]) == expected
    assert "--disable_cudagraph" not in expected


def test_v12_drops_v110_flags_and_passes_page_flags() -> None:
    argv, env = command(
        **PREFILL, **SINGLE, **V12, pd_trans_mode="nixl", pd_kv_page_num=32, pd_kv_page_size=512
    )
    got = flags(argv[3:])
    assert "--enable_fa3" not in got and "MOE_MODE" not in env and "KV_TRANS_USE_P2P" not in env
    assert (got["--pd_trans_mode"], got["--pd_kv_page_num"], got["--pd_kv_page_size"]) == (
        "nixl",
        "32",
        "512",
    )
    assert env["UCX_TLS"] == "rc,cuda,gdr_copy"
    tp_moe, _ = command(**PREFILL, **SINGLE, **V12, moe_mode="TP")
    assert "--enable_ep_moe" not in tp_moe


def test_v12_flags_are_refused_for_older_versions() -> None:
    from node_agents.config import ConfigError

    with pytest.raises(ConfigError, match="pd_kv_page_num = 32: is a LightLLM v1.2.0 flag"):
        parse_config({**PREFILL, **SINGLE, "pd_kv_page_num": 32})


def test_the_simulated_engine_is_told_its_version() -> None:
    argv, _ = command(**PREFILL, **SINGLE, **V12, engine="sim")
    assert flags(argv[3:])["--lightllm_version"] == "v1.2.0"
