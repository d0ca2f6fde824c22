"""What ``pd-cluster plan`` writes for a plan: a summary, agent files, start commands.

Layout of the output directory::

    plan.txt            the summary (also printed)
    agents/<host>.toml  one node agent file per GPU host
    start/<host>.sh     the one command each host runs (config server, master or agent)
    start_all.sh        an SSH loop over the hosts, in start order
    hosts.txt           the same order as ``name role address port`` lines (for scripts)
    k8s/*.yaml          the same cluster for Kubernetes (see ``kube.py``)
"""

from __future__ import annotations

import shlex
from pathlib import Path

from node_agents.lightllm_cmd import engine_command
from pdcluster.formats import dump_toml, dump_yaml
from pdcluster.kube import manifests
from pdcluster.layout import Plan
from pdcluster.spec import Host

GENERATED = "Written by pd-cluster plan from {source}; edit the cluster file, not this."


def summary(plan: Plan) -> str:
    spec = plan.spec
    config_servers = ", ".join(_where(h, spec.config_server.port) for h in plan.config_servers)
    lines = [
        f"cluster {spec.name}: {spec.engine} {spec.lightllm_version}, model {spec.model.dir} "
        f"({spec.model.routed_experts} routed experts)",
        f"config servers: {config_servers}"
        + (
            f" (etcd {','.join(spec.config_server.etcd_endpoints)})"
            if spec.config_server.etcd_endpoints
            else " (memory store)"
        ),
        f"agents and masters reach the config server at {plan.config_server_address}",
        f"masters: {', '.join(_where(h, spec.masters.port) for h in plan.masters)}",
        "",
        f"{'pool':<8} {'instances':>9} {'ep':>4} {'nodes/inst':>10} {'tp=dp':>6}  experts per GPU",
    ]
    for role, pool in spec.pools.items():
        experts = plan.experts[role]
        shared = f" + {spec.model.shared_experts} shared" if spec.model.shared_experts else ""
        redundancy = (
            f" (redundancy_expert_num {experts.redundant_per_rank})"
            if experts.redundant_per_rank
            else ""
        )
        lines.append(
            f"{role:<8} {pool.instances:>9} {pool.ep:>4} {pool.ep // pool.gpus_per_node:>10} "
            f"{pool.ep:>6}  {experts.per_gpu} routed{shared}{redundancy}"
        )
    for instance in plan.instances:
        lines.append("")
        nccl = f"--nccl_host {instance.nccl_host} " if instance.nnodes > 1 else ""
        lines.append(
            f"instance {instance.group_id}: {instance.nnodes} node(s), "
            f"{nccl}--nccl_port {instance.pool.nccl_port}"
        )
        for rank, host in enumerate(instance.hosts):
            lines.append(f"  rank {rank:>3}  {host.name:<12} {host.address}:{instance.pool.port}")
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines) + "\n"


def _where(host: Host, port: int) -> str:
    return f"{host.name} ({host.address}:{port})"


def start_script(plan: Plan, host: Host) -> str:
    """The one command this host runs, from the plan directory."""
    spec = plan.spec
    head = ["#!/usr/bin/env bash", f"# {host.name} ({host.role}) of cluster {spec.name}"]
    body: list[str]
    if host.role == "config_server":
        args = ["--config_server_host", host.address, "--config_server_port"]
        args.append(str(spec.config_server.port))
        args += ["--lightllm_version", spec.lightllm_version]
        if spec.config_server.etcd_endpoints:
            args += ["--store", "etcd", "--etcd-endpoints"]
            args.append(",".join(spec.config_server.etcd_endpoints))
        body = [_exec("config_server", args)]
    elif host.role == "master":
        cs_host, _, cs_port = plan.config_server_address.rpartition(":")
        args = ["--host", host.address, "--port", str(spec.masters.port)]
        args += ["--config_server_host", cs_host.strip("[]")]
        args += ["--config_server_port", cs_port]
        args += ["--lightllm_version", spec.lightllm_version]
        if spec.engine == "lightllm":
            args += ["--model_dir", spec.model.dir]
        body = [_exec("pdmaster", [*args, *spec.masters.extra_args])]
    else:
        config = plan.agents[host.name].model_copy(update={"python": "python3"})
        command = engine_command(config).shell(mps=config.mps_enabled)
        body = ["# the agent runs (pd-node-agent --dry-run):"]
        body += [f"#   {line}" for line in command.splitlines()]
        body.append(_exec("node_agents", ["--config", f"agents/{host.name}.toml"]))
    return "\n".join([*head, "set -euo pipefail", 'cd "$(dirname "$0")/.."', *body]) + "\n"


def _exec(module: str, args: list[str]) -> str:
    return f'exec "${{PYTHON:-python3}}" -m {module} {shlex.join(args)}'


def start_order(plan: Plan) -> list[tuple[Host, int]]:
    """Hosts in the order they start, each with the port its main process serves."""
    spec = plan.spec
    order = [(h, spec.config_server.port) for h in plan.config_servers]
    order += [(h, spec.masters.port) for h in plan.masters]
    order += [(h, i.pool.port) for i in plan.instances for h in i.hosts]
    return order


def hosts_list(plan: Plan) -> str:
    return "".join(f"{h.name} {h.role} {h.address} {port}\n" for h, port in start_order(plan))


def start_all(plan: Plan) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Starts every host's command over SSH, in order: config servers, masters, agents.",
        "# The plan directory must be at the same path on every host (PLAN_DIR).",
        "# shellcheck disable=SC2029  # PLAN_DIR is meant to expand here, quoted for the remote",
        "set -euo pipefail",
        'PLAN_DIR=${PLAN_DIR:-$(cd "$(dirname "$0")" && pwd)}',
        'dir=$(printf %q "$PLAN_DIR")',
    ]
    for host, _ in start_order(plan):
        script = shlex.quote(f"start/{host.name}.sh")
        log = shlex.quote(f"logs-{host.name}.txt")
        lines.append(
            f'ssh {shlex.quote(host.address)} "cd $dir && nohup bash {script} > {log} 2>&1 &"'
        )
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, out: Path, source: str) -> list[Path]:
    """Write every file of the plan under ``out``; the paths written."""
    header = GENERATED.format(source=source)
    files: dict[str, str] = {
        "plan.txt": summary(plan),
        "start_all.sh": start_all(plan),
        "hosts.txt": hosts_list(plan),
    }
    for instance in plan.instances:
        for rank, host in enumerate(instance.hosts):
            note = f"{header}\n{instance.group_id} rank {rank} of {instance.nnodes}"
            data = plan.agents[host.name].model_dump(exclude_defaults=True, mode="json")
            data.pop("python", None)  # each host's own interpreter
            files[f"agents/{host.name}.toml"] = dump_toml(data, note)
    for host in plan.spec.hosts:
        if host.role in ("config_server", "master") or host.name in plan.agents:
            files[f"start/{host.name}.sh"] = start_script(plan, host)
    for name, documents in manifests(plan).items():
        files[f"k8s/{name}.yaml"] = dump_yaml(documents, header)
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
