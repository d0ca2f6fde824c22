"""``pd-node-agent`` / ``python -m node_agents``: supervise one PD node's engine.

Reads a TOML file (``--config``), then the flags below, which override it. Flags take
LightLLM's spelling (``--model_dir``) or dashes (``--model-dir``), and LightLLM's own
flags for the node work too: ``--run_mode prefill``, ``--pd_master_ip/--pd_master_port``,
``--config_server_host/--config_server_port``. Port and nccl port default to LightLLM's
(8019/2732 prefill, 8121/12322 decode). Arguments after ``--`` are passed to the engine as
they are. Tokens come from the environment only:
PDCTL_AGENT_TOKEN (this agent's API), PDCTL_REGISTER_TOKEN (config server),
PDCTL_ADMIN_TOKEN (masters' admin API, for drain).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from node_agents.config import ConfigError, NodeConfig, load_config
from node_agents.lightllm_cmd import engine_command
from node_agents.serve import serve
from pdwire.cli import CommandParser, port_number

# (dotted config key, flag name, help); flags without a value in OPTIONS are booleans.
OPTIONS: list[tuple[str, str, str]] = [
    ("role", "role", "prefill or decode (also --run_mode, LightLLM's spelling)"),
    ("engine", "engine", "lightllm (default) or sim (the simulated engine)"),
    ("model_dir", "model_dir", "the model directory"),
    ("host", "host", "the engine's host (LightLLM refuses 127.0.0.1)"),
    ("port", "port", "the engine's HTTP port (8019 prefill, 8121 decode)"),
    ("tp", "tp", "tensor parallel size (8)"),
    ("dp", "dp", "data parallel size (8)"),
    ("nccl_port", "nccl_port", "NCCL port (2732 prefill, 12322 decode)"),
    ("pd_master", "pd_master", "ip:port of a single PD master"),
    ("config_server", "config_server", "ip:port of the config server (masters, registration)"),
    ("lightllm_version", "lightllm_version", "v1.1.0 (default), fc72ffa or v1.2.0"),
    ("moe_mode", "moe_mode", "MOE_MODE: EP (default) or TP (v1.2.0: EP is --enable_ep_moe)"),
    ("pd_trans_mode", "pd_trans_mode", "v1.2.0: nccl (default) or nixl"),
    ("pd_kv_page_num", "pd_kv_page_num", "v1.2.0: KV move buffer pages (LightLLM: 16)"),
    ("pd_kv_page_size", "pd_kv_page_size", "v1.2.0: tokens per KV page (LightLLM: 1024)"),
    ("loadworker", "loadworker", "LOADWORKER (18)"),
    ("python", "python", "the engine's Python interpreter (default: the agent's)"),
    ("restart.startsecs", "startsecs", "seconds up and healthy before RUNNING (5)"),
    ("restart.startretries", "startretries", "quick failures in a row before FATAL (3)"),
    ("restart.backoff_s", "backoff", "first delay before a restart, doubling (1)"),
    ("restart.backoff_cap_s", "backoff_cap", "longest delay before a restart (60)"),
    ("restart.startup_timeout_s", "startup_timeout", "longest STARTING before a kill (1800)"),
    ("restart.stop_signal", "stop_signal", "signal that stops the engine (TERM)"),
    ("restart.stopwaitsecs", "stopwaitsecs", "then SIGKILL the process group (30)"),
    ("health.interval_s", "health_interval", "seconds between /health probes (2)"),
    ("health.timeout_s", "health_timeout", "a probe's deadline (5)"),
    ("health.failures", "health_failures", "failed probes in a row that restart it (3)"),
    ("api.host", "api_host", "the agent API's address (127.0.0.1)"),
    ("api.port", "api_port", "the agent API's port (engine port + 1000)"),
    ("registration.node_id", "node_id", "id in the config server (<role>-<host>-<port>)"),
    ("registration.ttl_s", "ttl", "registration lease in seconds (10)"),
    ("registration.drain_timeout_s", "drain_timeout", "longest drain (600)"),
    ("logs.dir", "log_dir", "where engine.stdout.log and engine.stderr.log go (logs)"),
    ("logs.max_bytes", "log_max_bytes", "rotate a log file at this size"),
    ("logs.backups", "log_backups", "rotated files kept (5)"),
]
# a multi-node instance (LightLLM's multi-node flags) and its group in the config server
OPTIONS += [
    ("nnodes", "nnodes", "hosts the instance spans (1); tp and dp are the instance's"),
    ("node_rank", "node_rank", "this host's rank in the instance (0)"),
    ("nccl_host", "nccl_host", "rank 0's address (nnodes > 1)"),
    ("group.id", "group_id", "the instance's group id (<role>-<nccl_host>-<nccl_port>)"),
    ("group.poll_s", "group_poll", "seconds between reads of the group record (1)"),
]
SWITCHES: list[tuple[str, str, str]] = [
    ("kv_trans_use_p2p", "kv_trans_use_p2p", "set KV_TRANS_USE_P2P=1 (default on; not v1.2.0)"),
    ("enable_fa3", "enable_fa3", "pass --enable_fa3 (default on; v1.2.0 picks fa3 itself)"),
    ("disable_cudagraph", "disable_cudagraph", "pass --disable_cudagraph (default: prefill)"),
    ("microbatch_overlap", "microbatch_overlap", "--enable_{prefill,decode}_microbatch_overlap"),
    ("mps", "mps", "start nvidia-cuda-mps-control -d first (default: lightllm only)"),
]


# LightLLM's flags for a node's masters: host and port apart, where ours take host:port.
ADDRESS_FLAGS: list[tuple[str, str, str, int]] = [
    ("pd_master", "pd_master_ip", "pd_master_port", 60011),
    ("config_server", "config_server_host", "config_server_port", 60088),
]


def spellings(name: str) -> list[str]:
    dashed = name.replace("_", "-")
    names = [f"--{dashed}", f"--{name}"] if dashed != name else [f"--{name}"]
    return names + ["--run_mode"] if name == "role" else names


def build_parser() -> CommandParser:
    p = CommandParser("pd-node-agent", __doc__)
    p.add_argument("--config", type=Path, help="TOML file with the node's settings")
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="print what would run")
    p.add_argument("--log-level", "--log_level", default="info")
    p.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="engine env (repeat)"
    )
    for key, name, text in OPTIONS:
        p.add_argument(*spellings(name), dest=key, default=None, metavar=name.upper(), help=text)
    for key, ip_flag, port_flag, port in ADDRESS_FLAGS:
        p.add_argument(f"--{ip_flag}", dest=f"{key}_ip", help=f"LightLLM's spelling of --{key}")
        p.add_argument(
            f"--{port_flag}",
            dest=f"{key}_port",
            type=port_number,
            help=f"with --{ip_flag} ({port})",
        )
    for key, name, text in SWITCHES:
        p.add_argument(
            *spellings(name),
            dest=key,
            default=None,
            action=argparse.BooleanOptionalAction,
            help=text,
        )
    return p


def overrides_from(args: argparse.Namespace, engine_args: list[str]) -> dict[str, Any]:
    keys = [key for key, _, _ in OPTIONS + SWITCHES]
    values = vars(args)
    overrides: dict[str, Any] = {k: values[k] for k in keys if values[k] is not None}
    for key, ip_flag, port_flag, default_port in ADDRESS_FLAGS:
        ip, port = values[f"{key}_ip"], values[f"{key}_port"]
        if port is not None and ip is None:
            raise ConfigError(f"--{port_flag} needs --{ip_flag}")
        if ip is not None:
            if key in overrides:
                raise ConfigError(f"--{key} and --{ip_flag}: give one of them")
            host = f"[{ip}]" if ":" in ip else ip
            overrides[key] = f"{host}:{port or default_port}"
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r}: expected NAME=VALUE")
        overrides[f"env.{name}"] = value
    if engine_args:
        overrides["extra_args"] = engine_args
    return overrides


def check_runnable(config: NodeConfig) -> None:
    """What only the machine that runs the agent can check."""
    if config.engine == "lightllm" and not Path(config.model_dir).is_dir():
        raise ConfigError(f"model_dir = {config.model_dir!r}: not a directory on this machine")
    if shutil.which(config.python, path=os.environ.get("PATH")) is None:
        raise ConfigError(f"python = {config.python!r}: no such executable")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, engine_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = build_parser()
    args = parser.parse_args(own)
    try:
        config = load_config(args.config, overrides_from(args, engine_args), os.environ)
        if args.dry_run:
            print(engine_command(config).shell(mps=config.mps_enabled))
            return
        check_runnable(config)
    except ConfigError as exc:
        parser.fail(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe and renewal
    sys.exit(asyncio.run(serve(config, os.environ)))
