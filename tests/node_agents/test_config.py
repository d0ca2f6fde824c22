"""Node config: TOML file, CLI overrides, and errors that name the key and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agents.config import ConfigError, load_config, merge_overrides, parse_config

MINIMAL = {
    "role": "prefill",
    "model_dir": "/m",
    "host": "10.0.0.2",
    "port": 8019,
    "nccl_port": 2732,
    "config_server": "10.0.0.1:60088",
}


def error_of(**changes: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, **changes})
    return str(info.value)


def test_defaults_follow_lightllm_scripts_and_the_role() -> None:
    prefill = parse_config(MINIMAL)
    decode = parse_config({**MINIMAL, "role": "decode"})
    assert (prefill.moe_mode, prefill.loadworker, prefill.kv_trans_use_p2p) == ("EP", 18, True)
    assert prefill.cudagraph_disabled and not decode.cudagraph_disabled
    assert prefill.mps_enabled
    assert not parse_config({**MINIMAL, "engine": "sim"}).mps_enabled
    assert prefill.api_port == 9019 and prefill.api.host == "127.0.0.1"
    assert prefill.node_id == "prefill-10.0.0.2-8019"
    assert prefill.restart.stop_signum.name == "SIGTERM"


def test_toml_file_then_cli_overrides(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'role = "decode"\nmodel_dir = "/m"\nhost = "10.0.0.3"\nport = 8121\nnccl_port = 12322\n'
        'pd_master = "10.0.0.1:60011"\n[restart]\nstartsecs = 2\nstopwaitsecs = 9\n'
        '[env]\nA = "1"\n'
    )
    config = load_config(path, {"restart.startsecs": "7", "tp": "4", "dp": "2", "env.B": "2"})
    assert config.role == "decode" and config.tp == 4 and config.dp == 2
    assert (config.restart.startsecs, config.restart.stopwaitsecs) == (7.0, 9.0)
    assert config.env == {"A": "1", "B": "2"}


def test_secrets_come_from_the_environment() -> None:
    env = {"PDCTL_AGENT_TOKEN": "a", "PDCTL_REGISTER_TOKEN": "r", "PDCTL_ADMIN_TOKEN": "m"}
    config = load_config(None, MINIMAL, env)
    assert (config.api.token, config.registration.token) == ("a", "r")
    assert config.registration.master_admin_token == "m"
    assert "'a'" not in repr(config)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"tp": 0}, "tp = 0: Input should be greater than or equal to 1"),
        ({"tp": "eight"}, "tp = 'eight': Input should be a valid integer"),
        ({"role": "router"}, "role = 'router': Input should be 'prefill' or 'decode'"),
        ({"engine": "vllm"}, "engine = 'vllm'"),
        ({"port": 70000}, "port = 70000"),
        ({"moe_mode": "XP"}, "moe_mode = 'XP'"),
        ({"host": "127.0.0.1"}, "host = '127.0.0.1': LightLLM nodes refuse"),
        ({"host": "bad host!"}, "host = 'bad host!': must be an IP address or a host name"),
        ({"dp": 3}, "dp = 3: must divide tp (8)"),
        ({"nccl_port": 8019}, "nccl_port = 8019: is already used by port"),
        ({"config_server": "nowhere"}, "config_server = 'nowhere': must be host:port"),
        ({"config_server": None}, "pd_master = None: set pd_master or config_server"),
        ({"model_dir": ""}, "model_dir = '': LightLLM needs a model directory"),
        ({"restart": {"stop_signal": "NOPE"}}, "restart.stop_signal = 'NOPE': must be a signal"),
        ({"restart": {"startsecs": -1}}, "restart.startsecs = -1"),
        ({"restart": {"backoff_s": 5, "backoff_cap_s": 1}}, "backoff_cap_s (1.0) must not"),
        ({"env": {"1BAD": "x"}}, "'1BAD' is not an environment variable name"),
        ({"tpp": 8}, "tpp: unknown key (value 8)"),
        ({"registration": {"node_id": "a b"}}, "registration.node_id = 'a b'"),
    ],
)
def test_invalid_config_names_the_key_and_the_value(changes: dict, expected: str) -> None:
    assert expected in error_of(**changes)


def test_missing_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="host: required key is missing"):
        parse_config({k: v for k, v in MINIMAL.items() if k != "host"})


def test_secret_values_are_not_echoed_in_errors() -> None:
    message = error_of(api={"token": 12345})
    assert "api.token" in message and "12345" not in message


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("role = \n")
    with pytest.raises(ConfigError, match="node.toml is not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")


def test_overrides_do_not_mutate_the_base() -> None:
    base = {"restart": {"startsecs": 1}}
    merged = merge_overrides(base, {"restart.startsecs": 2, "health.failures": 5})
    assert base == {"restart": {"startsecs": 1}}
    assert merged == {"restart": {"startsecs": 2}, "health": {"failures": 5}}


def test_simulated_engine_may_use_loopback_without_a_model_dir() -> None:
    config = parse_config({**MINIMAL, "engine": "sim", "host": "127.0.0.1", "model_dir": ""})
    assert config.engine == "sim"
