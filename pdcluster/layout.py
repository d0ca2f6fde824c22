"""From a cluster file to a plan: instances, ranks on hosts, one agent config per GPU host.

An EP pool of ``ep`` GPUs with ``gpus_per_node`` per host makes instances of
``nnodes = ep / gpus_per_node`` hosts; each runs LightLLM with ``--tp ep --dp ep`` and
``--nnodes/--node_rank/--nccl_host`` (rank 0's address), as LightLLM's multi-node EP
scripts do. Every agent config is built with the agent's own validation
(``node_agents.config``), so a plan that passes here is one the agents accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node_agents.config import ConfigError, NodeConfig, parse_config
from pdcluster.spec import POOL_ROLES, ClusterSpec, Host, PlanError, Pool

# LightLLM's defaults for ports it binds without a flag in the scripts
MULTINODE_HTTPMANAGER_PORT = 12345  # rank 0 binds + 100 + i for each rank i > 0
PD_DECODE_RPYC_PORT = 42000  # decode nodes' KV hand-off
AGENT_PORT_OFFSET = 1000  # the agent's API: engine port + 1000


@dataclass(frozen=True)
class Instance:
    cluster: str
    role: str
    index: int
    pool: Pool
    hosts: list[Host]

    @property
    def nnodes(self) -> int:
        return len(self.hosts)

    @property
    def group_id(self) -> str:
        return f"{self.cluster}-{self.role}-{self.index}"

    @property
    def nccl_host(self) -> str:
        return self.hosts[0].address


@dataclass(frozen=True)
class Experts:
    per_gpu: int  # routed copies (originals + redundant) per GPU
    redundant_per_rank: int | None  # LightLLM's redundancy_expert_num, when it fits


@dataclass
class Plan:
    spec: ClusterSpec
    instances: list[Instance]
    masters: list[Host]
    config_servers: list[Host]
    agents: dict[str, NodeConfig]  # by host name
    experts: dict[str, Experts]
    warnings: list[str] = field(default_factory=list)

    @property
    def config_server_address(self) -> str:
        """What agents and masters are told: the file's address, else the first host's."""
        if self.spec.config_server.address:
            return self.spec.config_server.address
        host = self.config_servers[0]
        return f"{host.address}:{self.spec.config_server.port}"

    def host_key(self, host: Host) -> str:
        return f"hosts[{self.spec.hosts.index(host)}]"


def plan(spec: ClusterSpec) -> Plan:
    problems: list[str] = []
    warnings: list[str] = []
    _check_hosts(spec, problems)
    by_role = {role: [h for h in spec.hosts if h.role == role] for role in POOL_ROLES}
    masters = [h for h in spec.hosts if h.role == "master"]
    config_servers = [h for h in spec.hosts if h.role == "config_server"]
    if not masters:
        problems.append("hosts: no host has role = 'master'")
    if not config_servers:
        problems.append("hosts: no host has role = 'config_server'")
    if len(config_servers) > 1 and not spec.config_server.etcd_endpoints:
        problems.append(
            f"config_server.etcd_endpoints = []: {len(config_servers)} config_server hosts "
            "share their registry only through etcd (the memory store serves one replica)"
        )
    if len(config_servers) > 1 and spec.config_server.address is None:
        warnings.append(
            f"config_server: agents and masters are told the first of {len(config_servers)} "
            f"config servers ({config_servers[0].name}); set config_server.address to a name "
            "or VIP that reaches them all"
        )
    instances: list[Instance] = []
    experts: dict[str, Experts] = {}
    for role, pool in spec.pools.items():
        key = f"pools.{role}"
        found = _check_pool(spec, role, pool, key, problems, warnings)
        if found is not None:
            experts[role] = found
        hosts = _pool_hosts(spec, role, pool, by_role[role], key, problems)
        nnodes = pool.ep // pool.gpus_per_node if pool.ep % pool.gpus_per_node == 0 else 0
        if not nnodes or hosts is None:
            continue
        needed = pool.instances * nnodes
        if len(hosts) < needed:
            problems.append(
                f"{key}.instances = {pool.instances}: needs {needed} {role} hosts "
                f"({pool.instances} x {nnodes} per instance), the file has {len(hosts)}"
            )
            continue
        if len(hosts) > needed:
            unused = ", ".join(h.name for h in hosts[needed:])
            warnings.append(f"{key}: {len(hosts) - needed} {role} host(s) left unused: {unused}")
        for host in hosts[:needed]:
            if spec.engine == "lightllm" and host.gpus < pool.gpus_per_node:
                problems.append(
                    f"hosts[{spec.hosts.index(host)}].gpus = {host.gpus}: pool {role} runs "
                    f"{pool.gpus_per_node} GPUs per node"
                )
        for i in range(pool.instances):
            ranks = hosts[i * nnodes : (i + 1) * nnodes]
            instances.append(Instance(spec.name, role, i, pool, ranks))
    for missing in POOL_ROLES:
        if missing not in spec.pools:
            problems.append(f"pools.{missing}: required section is missing")
    if problems:
        raise PlanError(problems)
    result = Plan(spec, instances, masters, config_servers, {}, experts, warnings)
    for instance in instances:
        for rank, host in enumerate(instance.hosts):
            data = agent_data(result, instance, rank, host)
            try:
                result.agents[host.name] = parse_config(data)
            except ConfigError as exc:
                problems.append(f"{result.host_key(host)} ({host.name}): {exc}")
    if problems:
        raise PlanError(problems)
    return result


def _check_hosts(spec: ClusterSpec, problems: list[str]) -> None:
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, host in enumerate(spec.hosts):
        if host.name in names:
            problems.append(f"hosts[{i}].name = {host.name!r}: already hosts[{names[host.name]}]")
        names.setdefault(host.name, i)
        if host.address in addresses:
            first = addresses[host.address]
            problems.append(
                f"hosts[{i}].address = {host.address!r}: already hosts[{first}] "
                f"({spec.hosts[first].name}); a host has one role"
            )
        addresses.setdefault(host.address, i)


def _check_pool(
    spec: ClusterSpec, role: str, pool: Pool, key: str, problems: list[str], warnings: list[str]
) -> Experts | None:
    if pool.ep % pool.gpus_per_node:
        problems.append(
            f"{key}.ep = {pool.ep}: must be a multiple of gpus_per_node ({pool.gpus_per_node})"
        )
    routed, redundant = spec.model.routed_experts, pool.redundant_experts
    found = None
    if (routed + redundant) % pool.ep:
        problems.append(
            f"{key}.redundant_experts = {redundant}: {routed} routed + {redundant} redundant "
            f"experts over ep = {pool.ep} GPUs is not a whole number per GPU"
        )
    else:
        fits = routed % pool.ep == 0 and redundant % pool.ep == 0
        found = Experts((routed + redundant) // pool.ep, redundant // pool.ep if fits else None)
        if redundant and not fits:
            warnings.append(
                f"{key}: LightLLM's redundancy config (--ep_redundancy_expert_config_path) "
                f"gives every rank the same redundancy_expert_num and splits the {routed} "
                f"routed experts evenly, which ep = {pool.ep} cannot; its engines place "
                f"{routed + redundant} copies only with a placement of their own"
            )
    _check_ports(role, pool, key, problems)
    return found


def _check_ports(role: str, pool: Pool, key: str, problems: list[str]) -> None:
    agent = pool.port + AGENT_PORT_OFFSET
    if agent > 65535:
        problems.append(f"{key}.port = {pool.port}: the agent API port (port + 1000) passes 65535")
        return
    taken: dict[int, str] = {
        pool.port: f"{key}.port",
        agent: f"the agent API port ({key}.port + 1000)",
    }
    if role == "decode":
        taken.setdefault(PD_DECODE_RPYC_PORT, "LightLLM's --pd_decode_rpyc_port (42000)")
    nnodes = pool.ep // pool.gpus_per_node or 1
    for i in range(1, nnodes):
        port = MULTINODE_HTTPMANAGER_PORT + 100 + i
        taken.setdefault(port, f"LightLLM's multi-node hand-shake port {port} (rank 0)")
    if pool.nccl_port in taken:
        problems.append(
            f"{key}.nccl_port = {pool.nccl_port}: clashes with {taken[pool.nccl_port]} "
            f"on every {role} host"
        )


def _pool_hosts(
    spec: ClusterSpec,
    role: str,
    pool: Pool,
    of_role: list[Host],
    key: str,
    problems: list[str],
) -> list[Host] | None:
    if pool.hosts is None:
        return of_role
    by_name = {h.name: h for h in spec.hosts}
    hosts, ok = [], True
    for i, name in enumerate(pool.hosts):
        host = by_name.get(name)
        if host is None:
            problems.append(f"{key}.hosts[{i}] = {name!r}: no such host")
            ok = False
        elif host.role != role:
            problems.append(f"{key}.hosts[{i}] = {name!r}: host {name} has role {host.role}")
            ok = False
        elif host in hosts:
            problems.append(f"{key}.hosts[{i}] = {name!r}: listed twice")
            ok = False
        else:
            hosts.append(host)
    return hosts if ok else None


def agent_data(plan: Plan, instance: Instance, rank: int, host: Host) -> dict[str, Any]:
    """The agent file for one rank, as a dict (what ``node_agents.config`` reads)."""
    spec, pool = plan.spec, instance.pool
    sup = spec.supervision
    sim = spec.engine == "sim"
    data: dict[str, Any] = {
        "role": instance.role,
        "engine": spec.engine,
        "host": host.address,
        "port": pool.port,
        "nccl_port": pool.nccl_port,
        "tp": pool.ep,
        "dp": pool.ep,
        "config_server": plan.config_server_address,
        "moe_mode": "EP",
        "kv_trans_use_p2p": False,  # LightLLM's multi-master scripts leave it off
        "microbatch_overlap": pool.microbatch_overlap,
    }
    if not sim:
        data["model_dir"] = spec.model.dir
    if instance.nnodes > 1:
        data.update(nnodes=instance.nnodes, node_rank=rank, nccl_host=instance.nccl_host)
    extra = list(pool.extra_args)
    if sim:
        extra += ["--lightllm_version", spec.lightllm_version, *sup.extra_sim_args]
    if extra:
        data["extra_args"] = extra
    if pool.env:
        data["env"] = dict(pool.env)
    data["restart"] = {
        "startsecs": sup.startsecs,
        "startretries": sup.startretries,
        "stopwaitsecs": sup.stopwaitsecs,
        "startup_timeout_s": sup.startup_timeout_s,
    }
    if host.address.startswith("127."):  # agents sharing one machine: one API address each
        data["api"] = {"host": host.address}
    data["registration"] = {"node_id": host.name}
    data["group"] = {"id": instance.group_id, "poll_s": sup.group_poll_s}
    data["logs"] = {"dir": f"logs/{host.name}"}
    return data
