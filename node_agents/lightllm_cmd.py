"""The engine's argv and environment, as LightLLM's PD start scripts write them.

LightLLM's multi-PD-master prefill script runs::

    nvidia-cuda-mps-control -d
    MOE_MODE=EP LOADWORKER=18 python -m lightllm.server.api_server --model_dir M \\
      --run_mode prefill --host H --port 8019 --tp 8 --dp 8 --nccl_port 2732 --enable_fa3 \\
      --disable_cudagraph --config_server_host C --config_server_port 60088

and the decode script the same with its own port, nccl port and CUDA graphs on. The
single-master scripts add ``KV_TRANS_USE_P2P=1`` and name the master with
``--pd_master_ip/--pd_master_port`` instead of the config server. The simulated engine
takes the same flags, so ``engine = "sim"`` only swaps the module.

LightLLM v1.2.0 (``lightllm_version = "v1.2.0"``) reads neither ``MOE_MODE`` (its flag is
``--enable_ep_moe``) nor ``KV_TRANS_USE_P2P`` (P2P is always on) and has no ``--enable_fa3``
(the attention backend is ``auto``: fa3 first). Its scripts add ``--pd_trans_mode nccl``;
the page flags (``--pd_kv_page_num``, ``--pd_kv_page_size``) are passed when set, and NIXL
gets the UCX settings the scripts export. The decode node keeps CUDA graphs on and, as
LightLLM's deployment doc has it, also takes ``--enable_ep_moe``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from node_agents.config import NodeConfig, split_address

ENGINE_MODULES = {"lightllm": "lightllm.server.api_server", "sim": "node_agents.simengine"}
MPS_START = ("nvidia-cuda-mps-control", "-d")
# v1.2.0's scripts export these for NIXL (and UCX_NET_DEVICES, which is the machine's own)
UCX_ENV = {"UCX_LOG_LEVEL": "info", "UCX_TLS": "rc,cuda,gdr_copy"}


@dataclass(frozen=True)
class EngineCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the agent's environment

    def shell(self, mps: bool = False) -> str:
        """The command as a script LightLLM's operators would write (one flag per line)."""
        lines = [shlex.join(MPS_START)] if mps else []
        assignments = [f"{name}={shlex.quote(value)}" for name, value in self.env.items()]
        head = [*assignments, *(shlex.quote(a) for a in self.argv[:3])]
        parts = [" ".join(head)]
        for flag, value in flag_groups(self.argv[3:]):
            parts.append(shlex.join([flag, value]) if value is not None else shlex.quote(flag))
        lines.append(" \\\n  ".join(parts))
        return "\n".join(lines)


def flag_groups(args: list[str]) -> list[tuple[str, str | None]]:
    """``--a 1 --b --c x`` -> [("--a", "1"), ("--b", None), ("--c", "x")]."""
    groups: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        takes_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        groups.append((args[i], args[i + 1] if takes_value else None))
        i += 2 if takes_value else 1
    return groups


def engine_command(config: NodeConfig) -> EngineCommand:
    argv = [config.python, "-m", ENGINE_MODULES[config.engine], *engine_args(config)]
    return EngineCommand(with_multinode(argv, config), engine_env(config))


def engine_env(config: NodeConfig) -> dict[str, str]:
    env: dict[str, str] = {}
    if config.lightllm_version == "v1.2.0":
        if config.pd_trans_mode == "nixl":
            env.update(UCX_ENV)
    else:
        env["MOE_MODE"] = config.moe_mode
        if config.kv_trans_use_p2p:
            env["KV_TRANS_USE_P2P"] = "1"
    env["LOADWORKER"] = str(config.loadworker)
    env.update(config.env)
    return env


def engine_args(config: NodeConfig) -> list[str]:
    args = [
        "--model_dir",
        config.model_dir,
        "--run_mode",
        config.role,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--tp",
        str(config.tp),
        "--dp",
        str(config.dp),
        "--nccl_port",
        str(config.nccl_port),
    ]
    if not config.model_dir:  # the simulated engine has a default model
        args = args[2:]
    if config.lightllm_version == "v1.2.0":
        args += v12_args(config)
    elif config.enable_fa3:
        args.append("--enable_fa3")
    if config.cudagraph_disabled:
        args.append("--disable_cudagraph")
    args += master_args(config)
    if config.microbatch_overlap:
        args.append(f"--enable_{config.role}_microbatch_overlap")
    if config.engine == "sim":  # LightLLM's release is what is installed; the sim is told
        args += ["--lightllm_version", config.lightllm_version]
    return args + list(config.extra_args)


def v12_args(config: NodeConfig) -> list[str]:
    args = ["--pd_trans_mode", config.pd_trans_mode]
    if config.pd_kv_page_num is not None:
        args += ["--pd_kv_page_num", str(config.pd_kv_page_num)]
    if config.pd_kv_page_size is not None:
        args += ["--pd_kv_page_size", str(config.pd_kv_page_size)]
    if config.moe_mode == "EP":
        args.append("--enable_ep_moe")
    return args


def master_args(config: NodeConfig) -> list[str]:
    """A single master by address, or every master the config server knows."""
    if config.pd_master is not None:
        host, port = split_address(config.pd_master)
        return ["--pd_master_ip", host, "--pd_master_port", str(port)]
    assert config.config_server is not None  # NodeConfig requires one of the two
    host, port = split_address(config.config_server)
    return ["--config_server_host", host, "--config_server_port", str(port)]


def multinode_args(config: NodeConfig) -> list[str]:
    """LightLLM's multi-node flags (its ``multi_node_ep_node<i>.sh``): the same command on
    every host plus these; ``--tp/--dp`` are the whole instance's. Nothing for one node."""
    if not config.multinode:
        return []
    assert config.nccl_host is not None  # NodeConfig requires it for nnodes > 1
    return [
        "--nnodes",
        str(config.nnodes),
        "--node_rank",
        str(config.node_rank),
        "--nccl_host",
        config.nccl_host,
    ]


def with_multinode(argv: list[str], config: NodeConfig) -> list[str]:
    """Any version's command line with the multi-node flags, before the pass-through args."""
    extra = len(config.extra_args)
    head, tail = (argv[:-extra], argv[-extra:]) if extra else (argv, [])
    return [*head, *multinode_args(config), *tail]
