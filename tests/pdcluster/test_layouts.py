"""The seed layouts, rendered: per-host commands flag by flag against LightLLM's scripts,
agent files the agent reads back, valid Kubernetes objects, examples kept up to date.

LightLLM's multi-node EP scripts (test/start_scripts/multi_node_ep_node{0,1}.sh) run the
same command on every host, ``MOE_MODE=EP LOADWORKER=18 python -m lightllm.server.api_server
--model_dir M --tp N --dp N --enable_fa3 --nnodes K --node_rank i --nccl_host <rank 0>
--nccl_port P``; the multi-PD-master scripts add ``--run_mode``, ``--host``, ``--port``, the
config server, and ``--disable_cudagraph`` on prefill.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from node_agents.config import load_config
from node_agents.lightllm_cmd import engine_command, flag_groups
from pdcluster.layout import Plan, plan
from pdcluster.render import write_plan
from pdcluster.spec import load_spec
from tests.conftest import REPO_ROOT
from tests.pdcluster.kube_schemas import validate

EXAMPLES = REPO_ROOT / "deploy" / "examples"
LAYOUTS = sorted(p.stem for p in EXAMPLES.glob("*.toml"))


def planned(name: str) -> Plan:
    return plan(load_spec(EXAMPLES / f"{name}.toml"))


def flags(p: Plan, host: str) -> tuple[dict[str, str | None], dict[str, str]]:
    command = engine_command(p.agents[host])
    assert command.argv[1:3] == ["-m", "lightllm.server.api_server"]
    groups = flag_groups(command.argv[3:])
    assert len({f for f, _ in groups}) == len(groups), "a flag is repeated"
    return dict(groups), command.env


def expected(
    role: str, host: str, port: int, ep: int, nccl_port: int, config_server: str = "10.0.0.11"
) -> dict[str, str | None]:
    out: dict[str, str | None] = {
        "--model_dir": "/models/DeepSeek-R1",
        "--run_mode": role,
        "--host": host,
        "--port": str(port),
        "--tp": str(ep),
        "--dp": str(ep),
        "--nccl_port": str(nccl_port),
        "--enable_fa3": None,
        "--config_server_host": config_server,
        "--config_server_port": "60088",
    }
    if role == "prefill":
        out["--disable_cudagraph"] = None
    return out


@pytest.mark.parametrize(
    ("role", "ranks", "ep", "port", "nccl_port", "first"),
    [("prefill", 4, 32, 8019, 2732, "10.0.1.11"), ("decode", 18, 144, 8121, 12322, "10.0.2.11")],
)
def test_deepseek_ep32_ep144_every_rank_runs_lightllms_multinode_command(
    role: str, ranks: int, ep: int, port: int, nccl_port: int, first: str
) -> None:
    p = planned("deepseek-ep32-ep144")
    (instance,) = [i for i in p.instances if i.role == role]
    assert instance.nnodes == ranks
    for rank, host in enumerate(instance.hosts):
        got, env = flags(p, host.name)
        assert env == {"MOE_MODE": "EP", "LOADWORKER": "18"}
        assert got == {
            **expected(role, host.address, port, ep, nccl_port, "config.deepseek.internal"),
            "--nnodes": str(ranks),
            "--node_rank": str(rank),
            "--nccl_host": first,
        }


def test_deepseek_experts_per_gpu_are_deepseeks() -> None:
    p = planned("deepseek-ep32-ep144")
    assert p.experts["prefill"].per_gpu == 9 and p.experts["prefill"].redundant_per_rank == 1
    assert p.experts["decode"].per_gpu == 2


def test_small_2p2d_is_four_one_node_instances_of_the_multi_master_scripts() -> None:
    p = planned("small-2p2d")
    assert [(i.group_id, i.nnodes) for i in p.instances] == [
        ("small-prefill-0", 1), ("small-prefill-1", 1), ("small-decode-0", 1), ("small-decode-1", 1)
    ]  # fmt: skip
    for instance in p.instances:
        (host,) = instance.hosts
        port, nccl = (8019, 2732) if instance.role == "prefill" else (8121, 12322)
        got, _ = flags(p, host.name)
        assert got == expected(instance.role, host.address, port, 8, nccl)


@pytest.mark.parametrize("name", LAYOUTS)
def test_written_agent_files_read_back_as_the_planned_config(name: str, tmp_path: Path) -> None:
    p = planned(name)
    write_plan(p, tmp_path, f"{name}.toml")
    for host, config in p.agents.items():
        again = load_config(tmp_path / "agents" / f"{host}.toml")
        assert again == config.model_copy(update={"python": again.python})


@pytest.mark.parametrize("name", LAYOUTS)
def test_manifests_are_valid_kubernetes(name: str, tmp_path: Path) -> None:
    write_plan(planned(name), tmp_path, f"{name}.toml")
    kinds = []
    for path in sorted((tmp_path / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            validate(document)
            kinds.append(document["kind"])
    assert kinds.count("LeaderWorkerSet") == 2 and kinds.count("Deployment") == 2


def lws(name: str, role: str, tmp_path: Path) -> dict[str, Any]:
    write_plan(planned(name), tmp_path, f"{name}.toml")
    documents = yaml.safe_load_all((tmp_path / "k8s" / f"30-{role}.yaml").read_text())
    return next(d for d in documents if d["kind"] == "LeaderWorkerSet")


def test_a_pool_is_a_leaderworkerset_of_instances_by_nodes(tmp_path: Path) -> None:
    decode = lws("deepseek-ep32-ep144", "decode", tmp_path)
    template = decode["spec"]["leaderWorkerTemplate"]
    assert decode["spec"]["replicas"] == 1 and template["size"] == 18
    pod = template["workerTemplate"]["spec"]
    (agent,) = pod["containers"]
    assert pod["hostNetwork"] and agent["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert agent["args"][-6:] == [
        "--nnodes", "$(LWS_GROUP_SIZE)", "--node_rank", "$(LWS_WORKER_INDEX)",
        "--nccl_host", "$(LWS_LEADER_ADDRESS)",
    ]  # fmt: skip
    assert "127.0.0.1:9121/status" in agent["readinessProbe"]["exec"]["command"][-1]
    assert "/drain" in agent["lifecycle"]["preStop"]["exec"]["command"][-1]


@pytest.mark.parametrize(
    ("field", "value"),
    [("sise", 18), ("restartPolicy", "Sometimes"), ("size", 0)],
)
def test_the_lws_schema_refuses_what_the_api_would(field: str, value: Any, tmp_path: Path) -> None:
    document = lws("small-2p2d", "prefill", tmp_path)
    document["spec"]["leaderWorkerTemplate"][field] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_the_lws_schema_checks_pod_templates_with_kubernetes_definitions(tmp_path: Path) -> None:
    document = lws("small-2p2d", "decode", tmp_path)
    document["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containerz"] = []
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


@pytest.mark.parametrize("name", LAYOUTS)
def test_committed_examples_are_up_to_date(name: str, tmp_path: Path) -> None:
    write_plan(planned(name), tmp_path, f"{name}.toml")
    committed = EXAMPLES / name
    stale = _differences(filecmp.dircmp(tmp_path, committed))
    assert not stale, (
        f"deploy/examples/{name}/ is stale ({stale[:5]}); run: "
        f"pd-cluster plan deploy/examples/{name}.toml --out deploy/examples/{name}"
    )


def _differences(cmp: filecmp.dircmp) -> list[str]:
    out = [*cmp.left_only, *cmp.right_only, *cmp.diff_files, *cmp.funny_files]
    for sub in cmp.subdirs.values():
        out += _differences(sub)
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_written_scripts_pass_bash_n_and_shellcheck(name: str) -> None:
    scripts = [*(EXAMPLES / name / "start").glob("*.sh"), EXAMPLES / name / "start_all.sh"]
    for path in scripts:
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=10)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout
