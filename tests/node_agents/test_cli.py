"""``pd-node-agent --dry-run`` and the CLI's overrides and errors."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from node_agents.cli import main

PREFILL = [
    "--role", "prefill", "--model_dir", "/path/DeepSeek-R1", "--host", "10.0.0.2",
    "--port", "8019", "--nccl_port", "2732", "--config-server", "10.0.0.1:60088",
    "--python", "python",
]  # fmt: skip


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    main(["--dry-run", *args])
    return capsys.readouterr().out.splitlines()


def words(lines: list[str]) -> list[str]:
    return shlex.split(" ".join(line.rstrip("\\") for line in lines))


def test_dry_run_prints_mps_then_the_engine_command(capsys: pytest.CaptureFixture[str]) -> None:
    lines = dry_run(capsys, *PREFILL)
    assert lines[0] == "nvidia-cuda-mps-control -d"
    got = words(lines[1:])
    assert got[:6] == [
        "MOE_MODE=EP", "KV_TRANS_USE_P2P=1", "LOADWORKER=18",
        "python", "-m", "lightllm.server.api_server",
    ]  # fmt: skip
    assert "--disable_cudagraph" in got and got[-2:] == ["--config_server_port", "60088"]


def test_flags_override_the_file_and_extra_args_follow_a_double_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.toml"
    path.write_text('role = "decode"\nport = 8121\nnccl_port = 12322\nloadworker = 4\n')
    lines = dry_run(
        capsys, "--config", str(path), "--model_dir", "/m", "--host", "10.0.0.3",
        "--pd_master", "10.0.0.1:60011", "--loadworker", "9", "--no-mps",
        "--env", "CUDA_VISIBLE_DEVICES=0,1", "--microbatch_overlap",
        "--", "--max_total_token_num", "400000",
    )  # fmt: skip
    got = words(lines)
    assert "LOADWORKER=9" in got and "CUDA_VISIBLE_DEVICES=0,1" in got
    assert not any("mps" in line for line in lines)
    assert "--disable_cudagraph" not in got  # decode keeps CUDA graphs on
    assert got[-3:] == ["--enable_decode_microbatch_overlap", "--max_total_token_num", "400000"]


def test_invalid_value_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--dry-run", *PREFILL, "--tp", "0"])
    assert info.value.code == 2
    assert "invalid config: tp = '0': Input should be greater than or equal to 1" in (
        capsys.readouterr().err
    )


def test_start_refuses_a_model_dir_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*PREFILL, "--model_dir", "/nonexistent/model"])
    assert info.value.code == 2
    assert "model_dir = '/nonexistent/model': not a directory" in capsys.readouterr().err


def test_module_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node_agents", "--dry-run", *PREFILL, "--engine", "sim"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert (
        "-m node_agents.simengine" in done.stdout and "nvidia-cuda-mps-control" not in done.stdout
    )


def test_start_refuses_a_python_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*PREFILL, "--model_dir", str(tmp_path), "--python", "/nonexistent/python3"])
    assert info.value.code == 2
    assert "python = '/nonexistent/python3': no such executable" in capsys.readouterr().err


def test_lightllms_spellings_and_default_ports_per_role(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """LightLLM's node flags name the role and the masters; ports default to its scripts'."""
    for role, port, nccl in [("prefill", "8019", "2732"), ("decode", "8121", "12322")]:
        got = words(
            dry_run(
                capsys,
                "--run_mode",
                role,
                "--model_dir",
                "/m",
                "--host",
                "10.0.0.2",
                "--pd_master_ip",
                "10.0.0.1",
                "--python",
                "python",
            )  # fmt: skip
        )
        for flag, value in [
            ("--run_mode", role), ("--port", port), ("--nccl_port", nccl),
            ("--pd_master_ip", "10.0.0.1"), ("--pd_master_port", "60011"),
        ]:  # fmt: skip
            assert got[got.index(flag) + 1] == value
    got = words(
        dry_run(
            capsys,
            "--run_mode",
            "decode",
            "--model_dir",
            "/m",
            "--host",
            "10.0.0.2",
            "--config_server_host",
            "10.0.0.9",
            "--config_server_port",
            "60099",
            "--python",
            "python",
        )  # fmt: skip
    )
    assert got[-4:] == ["--config_server_host", "10.0.0.9", "--config_server_port", "60099"]


def test_a_port_without_its_host_or_two_spellings_of_one_address_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["--run_mode", "prefill", "--engine", "sim", "--host", "10.0.0.2"]
    for extra, message in [
        (["--pd_master_port", "60011"], "--pd_master_port needs --pd_master_ip"),
        (["--pd_master", "10.0.0.1:1", "--pd_master_ip", "10.0.0.1"], "give one of them"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["--dry-run", *base, *extra])
        assert info.value.code == 2 and message in capsys.readouterr().err
