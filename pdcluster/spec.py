"""The cluster file: hosts, the model, the prefill and decode pools by parallel layout.

Read with ``load_spec``; every problem raises ``PlanError`` whose lines each name the key
(``pools.decode.ep``, ``hosts[3].gpus``) and the bad value. Checks here are the file's own
(types, ranges, unknown keys, names); ``layout.plan`` checks how the pieces fit together.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from node_agents.config import NODE_ID, check_host, split_address
from pdwire.structs import LAYOUTS

HostRole = Literal["prefill", "decode", "master", "config_server"]
POOL_ROLES = ("prefill", "decode")


class PlanError(ValueError):
    """The cluster file cannot be planned; one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid cluster file:\n  " + "\n  ".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Section):
    name: str
    address: str
    role: HostRole
    gpus: int = Field(default=0, ge=0, le=64)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NODE_ID.match(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 128)")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        check_host(value)
        return value


class Model(_Section):
    dir: str = Field(min_length=1)
    routed_experts: int = Field(default=256, ge=1)
    shared_experts: int = Field(default=1, ge=0, description="per GPU, as DeepSeek's report")


class Pool(_Section):
    """One role's instances: ``ep`` GPUs each (``--tp = --dp = ep``, MOE_MODE=EP), spread
    over ``ep / gpus_per_node`` hosts."""

    ep: int = Field(ge=1)
    gpus_per_node: int = Field(default=8, ge=1, le=64)
    instances: int = Field(default=1, ge=1)
    redundant_experts: int = Field(default=0, ge=0)
    port: int = Field(ge=1, le=65535)
    nccl_port: int = Field(ge=1, le=65535)
    microbatch_overlap: bool = False
    hosts: list[str] | None = Field(default=None, description="default: hosts of this role")
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class Masters(_Section):
    port: int = Field(default=60011, ge=1, le=65535)
    extra_args: list[str] = Field(default_factory=list)


class ConfigServers(_Section):
    port: int = Field(default=60088, ge=1, le=65535)
    etcd_endpoints: list[str] = Field(default_factory=list)
    address: str | None = Field(
        default=None, description="host:port agents and masters use (DNS or a VIP over all)"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            try:
                split_address(endpoint)
            except ValueError:
                raise ValueError(f"{endpoint!r} must be host:port") from None
        return value


class Kubernetes(_Section):
    namespace: str = "pdctl"
    image: str = "pdctl-lightllm:latest"
    model_volume: str = Field(default="/models", description="host path mounted at model.dir")


class Supervision(_Section):
    """Knobs the plan writes into every agent's file (Supervisor's names)."""

    startsecs: float = Field(default=5.0, ge=0)
    startretries: int = Field(default=3, ge=0)
    stopwaitsecs: float = Field(default=30.0, gt=0)
    startup_timeout_s: float = Field(default=1800.0, gt=0)
    group_poll_s: float = Field(default=1.0, gt=0)
    extra_sim_args: list[str] = Field(default_factory=list, description="engine = sim only")


class ClusterSpec(_Section):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
    engine: Literal["lightllm", "sim"] = "lightllm"
    lightllm_version: str = "v1.1.0"
    model: Model
    hosts: list[Host] = Field(min_length=1)
    pools: dict[Literal["prefill", "decode"], Pool]
    masters: Masters = Masters()
    config_server: ConfigServers = ConfigServers()
    kubernetes: Kubernetes = Kubernetes()
    supervision: Supervision = Supervision()

    @field_validator("lightllm_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in LAYOUTS:
            raise ValueError(f"must be one of {', '.join(sorted(LAYOUTS))}")
        return value


def load_spec(path: Path) -> ClusterSpec:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PlanError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_spec(data)


def parse_spec(data: dict[str, Any]) -> ClusterSpec:
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise PlanError([_describe(error) for error in exc.errors(include_url=False)]) from None


def key_path(loc: tuple[int | str, ...]) -> str:
    """("hosts", 3, "gpus") -> "hosts[3].gpus"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "file"


def _describe(error: Any) -> str:
    key = key_path(tuple(error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (value {error['input']!r})"
    return f"{key} = {error['input']!r}: {message}"
