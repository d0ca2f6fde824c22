"""The plan as Kubernetes objects.

- the config server: a Deployment (one replica per config_server host; etcd endpoints from
  the file) and a Service;
- the masters: a Deployment and a Service (the clients' front door);
- each pool: a LeaderWorkerSet (the convention KServe and llm-d use for multi-node model
  instances) of ``instances`` groups of ``nnodes`` pods, each pod one GPU host running the
  node agent. LWS gives every pod ``LWS_LEADER_ADDRESS`` (rank 0's address: LightLLM's
  ``--nccl_host``), ``LWS_WORKER_INDEX`` (``--node_rank``) and ``LWS_GROUP_SIZE``
  (``--nnodes``). Pods use the host network (NCCL and LightLLM's ports), ask for the GPUs,
  let the agent start the MPS daemon, are ready while the agent's ``/status`` says RUNNING
  and drain before they stop (preStop). ``RecreateGroupOnPodRestart`` recreates a group
  whose pod was replaced; an engine's own failure is healed by the agents (all ranks
  restart through the config server's group record) without touching the pods.
"""

from __future__ import annotations

from typing import Any

from pdcluster.formats import dump_toml
from pdcluster.layout import AGENT_PORT_OFFSET, Plan
from pdcluster.spec import Pool

LWS_API = "leaderworkerset.x-k8s.io/v1"
TOKENS = ("PDCTL_REGISTER_TOKEN", "PDCTL_ADMIN_TOKEN", "PDCTL_AGENT_TOKEN")
DRAIN_TIMEOUT_S = 600

READY = """\
import json, os, sys, urllib.request
token = os.environ.get("PDCTL_AGENT_TOKEN")
request = urllib.request.Request("http://127.0.0.1:{port}/status")
if token:
    request.add_header("Authorization", "Bearer " + token)
status = json.load(urllib.request.urlopen(request, timeout=2))
sys.exit(0 if status["state"] == "RUNNING" else 1)
"""

DRAIN = """\
import json, os, time, urllib.request
token = os.environ.get("PDCTL_AGENT_TOKEN")
headers = {{"Content-Type": "application/json"}}
if token:
    headers["Authorization"] = "Bearer " + token
base = "http://127.0.0.1:{port}"
body = json.dumps({{"stop": True}}).encode()
urllib.request.urlopen(urllib.request.Request(base + "/drain", body, headers), timeout=30)
deadline = time.monotonic() + {timeout}
while time.monotonic() < deadline:
    ask = urllib.request.Request(base + "/status", None, headers)
    status = json.load(urllib.request.urlopen(ask, timeout=5))
    if status["engine"]["state"] in ("STOPPED", "FATAL"):
        break
    time.sleep(1)
"""


def manifests(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects in it."""
    spec = plan.spec
    ns = spec.kubernetes.namespace
    out = {
        "00-namespace": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}],
        "10-config-server": _config_server(plan),
        "20-masters": _masters(plan),
    }
    for role, pool in spec.pools.items():
        out[f"30-{role}"] = _pool(plan, role, pool)
    return out


def _meta(plan: Plan, name: str, component: str) -> dict[str, Any]:
    return {
        "name": f"{plan.spec.name}-{name}",
        "namespace": plan.spec.kubernetes.namespace,
        "labels": _labels(plan, component),
    }


def _labels(plan: Plan, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "pdctl", "app.kubernetes.io/instance": plan.spec.name,
            "app.kubernetes.io/component": component}  # fmt: skip


def _service_host(plan: Plan, name: str) -> str:
    return f"{plan.spec.name}-{name}.{plan.spec.kubernetes.namespace}.svc"


def _token_env() -> list[dict[str, Any]]:
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {
            "name": "pdctl-tokens", "key": name, "optional": True}}}
        for name in TOKENS
    ]  # fmt: skip


def _pod_ip() -> dict[str, Any]:
    return {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def _deployment(
    plan: Plan, name: str, replicas: int, container: dict[str, Any], volumes: list[Any]
) -> dict[str, Any]:
    labels = _labels(plan, name)
    pod: dict[str, Any] = {"containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(plan, name, name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _service(plan: Plan, name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, name, name),
        "spec": {
            "selector": _labels(plan, name),
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _config_server(plan: Plan) -> list[dict[str, Any]]:
    spec = plan.spec
    port = spec.config_server.port
    args = ["-m", "config_server", "--config_server_host", "0.0.0.0"]
    args += ["--config_server_port", str(port), "--lightllm_version", spec.lightllm_version]
    if spec.config_server.etcd_endpoints:
        args += ["--store", "etcd", "--etcd-endpoints", ",".join(spec.config_server.etcd_endpoints)]
    container = {
        "name": "config-server",
        "image": spec.kubernetes.image,
        "command": ["python3"],
        "args": args,
        "env": _token_env(),
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/readiness", "port": port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/liveness", "port": port}, "periodSeconds": 10},
    }
    replicas = len(plan.config_servers)
    return [
        _deployment(plan, "config-server", replicas, container, []),
        _service(plan, "config-server", port),
    ]


def _model_volume(plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": "model", "hostPath": {"path": plan.spec.kubernetes.model_volume}}
    mount = {"name": "model", "mountPath": plan.spec.model.dir, "readOnly": True}
    return volume, mount


def _masters(plan: Plan) -> list[dict[str, Any]]:
    spec = plan.spec
    port = spec.masters.port
    args = ["-m", "pdmaster", "--host", "0.0.0.0", "--port", str(port)]
    args += ["--advertise_address", f"$(POD_IP):{port}"]
    args += ["--config_server_host", _service_host(plan, "config-server")]
    args += ["--config_server_port", str(spec.config_server.port)]
    args += ["--lightllm_version", spec.lightllm_version]
    volumes: list[dict[str, Any]] = []
    container: dict[str, Any] = {"name": "master", "image": spec.kubernetes.image}
    if spec.engine == "lightllm":  # the tokenizer
        volume, mount = _model_volume(plan)
        volumes.append(volume)
        container["volumeMounts"] = [mount]
        args += ["--model_dir", spec.model.dir]
    container.update(
        command=["python3"],
        args=[*args, *spec.masters.extra_args],
        env=[_pod_ip(), *_token_env()],
        ports=[{"name": "http", "containerPort": port}],
        # ready once it has a prefill and a decode node to pair: then clients may come
        readinessProbe={"httpGet": {"path": "/readiness", "port": port}, "periodSeconds": 5},
        livenessProbe={"httpGet": {"path": "/liveness", "port": port}, "periodSeconds": 10},
    )
    return [
        _deployment(plan, "master", len(plan.masters), container, volumes),
        _service(plan, "master", port),
    ]


def agent_template(plan: Plan, role: str, pool: Pool) -> str:
    """The pool's agent file; each pod adds its address and rank as flags."""
    instance = next(i for i in plan.instances if i.role == role)
    data = plan.agents[instance.hosts[0].name].model_dump(exclude_defaults=True, mode="json")
    for per_pod in ("host", "node_rank", "nccl_host", "python", "api", "logs", "registration"):
        data.pop(per_pod, None)
    data["config_server"] = f"{_service_host(plan, 'config-server')}:{plan.spec.config_server.port}"
    data["group"] = {"poll_s": plan.spec.supervision.group_poll_s}  # id: per group (leader)
    data["logs"] = {"dir": "/var/log/pdctl"}
    return dump_toml(data, f"{role} pool of {plan.spec.name}; per pod: --host, --node_rank")


def _pool(plan: Plan, role: str, pool: Pool) -> list[dict[str, Any]]:
    spec = plan.spec
    nnodes = pool.ep // pool.gpus_per_node
    agent_port = pool.port + AGENT_PORT_OFFSET
    config_meta = _meta(plan, f"{role}-agent", role)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": config_meta,
        "data": {"agent.toml": agent_template(plan, role, pool)},
    }
    args = ["-m", "node_agents", "--config", "/etc/pdctl/agent.toml", "--host", "$(POD_IP)"]
    args += ["--node_id", "$(POD_NAME)"]
    if nnodes > 1:
        args += ["--nnodes", "$(LWS_GROUP_SIZE)", "--node_rank", "$(LWS_WORKER_INDEX)"]
        args += ["--nccl_host", "$(LWS_LEADER_ADDRESS)"]
    volume, mount = _model_volume(plan)
    gpus = {"nvidia.com/gpu": pool.gpus_per_node}
    container = {
        "name": "node-agent",
        "image": spec.kubernetes.image,
        "command": ["python3"],
        "args": args,
        "env": [
            _pod_ip(),
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *_token_env(),
        ],
        "ports": [
            {"name": "http", "containerPort": pool.port, "hostPort": pool.port},
            {"name": "nccl", "containerPort": pool.nccl_port, "hostPort": pool.nccl_port},
        ],
        "readinessProbe": {
            "exec": {"command": ["python3", "-c", READY.format(port=agent_port)]},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "lifecycle": {
            "preStop": {
                "exec": {
                    "command": [
                        "python3",
                        "-c",
                        DRAIN.format(port=agent_port, timeout=DRAIN_TIMEOUT_S),
                    ]
                }
            }
        },
        "volumeMounts": [
            {"name": "agent-config", "mountPath": "/etc/pdctl", "readOnly": True},
            mount,
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    if spec.engine == "lightllm":  # a simulated engine needs no GPU
        container["resources"] = {"limits": gpus, "requests": gpus}
    pod = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "terminationGracePeriodSeconds": DRAIN_TIMEOUT_S + int(spec.supervision.stopwaitsecs) + 30,
        "containers": [container],
        "volumes": [
            {"name": "agent-config", "configMap": {"name": config_meta["name"]}},
            volume,
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    lws = {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _meta(plan, role, role),
        "spec": {
            "replicas": pool.instances,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": nnodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "workerTemplate": {"metadata": {"labels": _labels(plan, role)}, "spec": pod},
            },
        },
    }
    return [config_map, lws]
