"""One node's agent configuration: a TOML file, then CLI overrides, validated in one place.

Every key of ``NodeConfig`` may appear in the TOML file (sections for the nested models:
``[restart]``, ``[health]``, ``[api]``, ``[registration]``, ``[logs]``); the CLI passes its
flags as dotted keys (``restart.startsecs``) that replace the file's values. An invalid
value raises ``ConfigError`` whose message names the key and the bad value.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Role = Literal["prefill", "decode"]
Engine = Literal["lightllm", "sim"]
LightLLMVersion = Literal["v1.1.0", "fc72ffa", "v1.2.0"]
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SECRET_KEYS = ("api.token", "registration.token", "registration.master_admin_token")
# LightLLM's PD scripts' ports per role: (HTTP port, NCCL port)
ROLE_PORTS = {"prefill": (8019, 2732), "decode": (8121, 12322)}


class ConfigError(ValueError):
    """The configuration cannot run; the message names the key and the bad value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(_Section):
    """Supervisor's knobs: how a start is judged and how the engine is stopped."""

    startsecs: float = Field(default=5.0, ge=0, description="seconds up (and /health answering)")
    startretries: int = Field(default=3, ge=0, description="quick failures in a row before FATAL")
    backoff_s: float = Field(default=1.0, gt=0, description="first wait before a restart")
    backoff_cap_s: float = Field(default=60.0, gt=0, description="longest wait before a restart")
    backoff_reset_s: float = Field(
        default=60.0, ge=0, description="a run this long resets the backoff"
    )
    startup_timeout_s: float = Field(
        default=1800.0, gt=0, description="longest STARTING before a kill"
    )
    stop_signal: str = Field(default="TERM", description="signal that asks the engine to stop")
    stopwaitsecs: float = Field(default=30.0, gt=0, description="then SIGKILL the process group")

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        signal_number(value)
        return value

    @model_validator(mode="after")
    def _cap(self) -> RestartPolicy:
        if self.backoff_cap_s < self.backoff_s:
            raise ValueError(
                f"backoff_cap_s ({self.backoff_cap_s}) must not be below backoff_s "
                f"({self.backoff_s})"
            )
        return self

    @property
    def stop_signum(self) -> signal.Signals:
        return signal_number(self.stop_signal)


class HealthConfig(_Section):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    failures: int = Field(default=3, ge=1, description="consecutive failed probes that restart it")
    path: str = "/health"


class ApiConfig(_Section):
    """The agent's own HTTP API; loopback unless told otherwise."""

    host: str = "127.0.0.1"
    port: int | None = Field(
        default=None, ge=0, le=65535, description="default: engine port + 1000"
    )
    token: str | None = Field(default=None, repr=False)


class RegistrationConfig(_Section):
    node_id: str | None = Field(default=None, description="default: <role>-<host>-<port>")
    ttl_s: float = Field(default=10.0, ge=1.0)
    token: str | None = Field(
        default=None, repr=False, description="the config server's register token"
    )
    master_admin_token: str | None = Field(
        default=None, repr=False, description="masters' admin token"
    )
    drain_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is not None and not NODE_ID.match(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 128)")
        return value


class GroupConfig(_Section):
    """A multi-node instance's group in the config server (see ``pdwire.groups``)."""

    id: str | None = Field(default=None, description="default: <role>-<nccl_host>-<nccl_port>")
    poll_s: float = Field(default=1.0, gt=0, description="seconds between group reads")
    ttl_s: float = Field(default=30.0, ge=1.0, description="the group record's lease")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None and not NODE_ID.match(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 128)")
        return value


class LogConfig(_Section):
    dir: Path = Path("logs")
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    backups: int = Field(default=5, ge=0)


class NodeConfig(_Section):
    role: Role
    engine: Engine = "lightllm"
    model_dir: str = ""
    host: str
    port: int = Field(ge=1, le=65535)
    tp: int = Field(default=8, ge=1)
    dp: int = Field(default=8, ge=1)
    nccl_port: int = Field(ge=1, le=65535)
    pd_master: str | None = Field(default=None, description="ip:port of a single master")
    config_server: str | None = Field(default=None, description="ip:port: masters and registration")
    lightllm_version: LightLLMVersion = Field(
        default="v1.1.0", description="the engine's LightLLM release: its flags and protocol"
    )
    moe_mode: Literal["EP", "TP"] = "EP"
    kv_trans_use_p2p: bool = True
    loadworker: int = Field(default=18, ge=1)
    enable_fa3: bool = True
    pd_trans_mode: Literal["nccl", "nixl"] = Field(
        default="nccl", description="v1.2.0: KV transport, the same on P and D"
    )
    pd_kv_page_num: int | None = Field(default=None, ge=1, description="v1.2.0 (LightLLM: 16)")
    pd_kv_page_size: int | None = Field(default=None, ge=1, description="v1.2.0 (LightLLM: 1024)")
    disable_cudagraph: bool | None = Field(default=None, description="default: on for prefill only")
    microbatch_overlap: bool = False
    mps: bool | None = Field(default=None, description="default: on for lightllm, off for sim")
    python: str = Field(default_factory=lambda: sys.executable)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    nnodes: int = Field(default=1, ge=1, le=1024, description="hosts one instance spans")
    node_rank: int = Field(default=0, ge=0, description="this host's rank in the instance")
    nccl_host: str | None = Field(default=None, description="rank 0's address (nnodes > 1)")
    # the sections are frozen, so one shared default instance is safe
    restart: RestartPolicy = RestartPolicy()
    health: HealthConfig = HealthConfig()
    api: ApiConfig = ApiConfig()
    registration: RegistrationConfig = RegistrationConfig()
    logs: LogConfig = LogConfig()
    group: GroupConfig = GroupConfig()

    @model_validator(mode="before")
    @classmethod
    def _role_ports(cls, data: Any) -> Any:
        """Ports left out take LightLLM's defaults for the role."""
        if isinstance(data, dict) and data.get("role") in ROLE_PORTS:
            port, nccl_port = ROLE_PORTS[data["role"]]
            data = {"port": port, "nccl_port": nccl_port, **data}
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        check_host(value)
        return value

    @field_validator("pd_master", "config_server")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not ENV_NAME.match(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NodeConfig:
        if self.pd_master is None and self.config_server is None:
            raise _KeyError("pd_master", None, "set pd_master or config_server (or both)")
        if self.lightllm_version != "v1.2.0":
            for key in ("pd_kv_page_num", "pd_kv_page_size"):
                if getattr(self, key) is not None:
                    raise _KeyError(key, getattr(self, key), "is a LightLLM v1.2.0 flag")
            if self.pd_trans_mode != "nccl":
                raise _KeyError("pd_trans_mode", self.pd_trans_mode, "is a LightLLM v1.2.0 flag")
        if self.tp % self.dp:
            raise _KeyError("dp", self.dp, f"must divide tp ({self.tp})")
        if self.engine == "lightllm":
            if not self.model_dir:
                raise _KeyError("model_dir", self.model_dir, "LightLLM needs a model directory")
            if self.host in ("127.0.0.1", "localhost"):
                raise _KeyError(
                    "host", self.host, "LightLLM nodes refuse 127.0.0.1/localhost; use 127.0.0.2"
                )
        ports = {"port": self.port, "nccl_port": self.nccl_port, "api.port": self.api_port}
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen and port:
                raise _KeyError(key, port, f"is already used by {seen[port]}")
            seen[port] = key
        return self

    @field_validator("nccl_host")
    @classmethod
    def _nccl_host(cls, value: str | None) -> str | None:
        if value is not None:
            check_host(value)
        return value

    @model_validator(mode="after")
    def _multinode(self) -> NodeConfig:
        if self.node_rank >= self.nnodes:
            raise _KeyError("node_rank", self.node_rank, f"must be below nnodes ({self.nnodes})")
        if self.nnodes == 1:
            return self
        if self.nccl_host is None:
            raise _KeyError("nccl_host", None, "a multi-node instance needs rank 0's address")
        for key in ("tp", "dp"):
            value = getattr(self, key)
            if value % self.nnodes:
                raise _KeyError(key, value, f"must be a multiple of nnodes ({self.nnodes})")
        if self.config_server is None:
            raise _KeyError("config_server", None, "a multi-node instance is supervised through it")
        return self

    @property
    def multinode(self) -> bool:
        return self.nnodes > 1

    @property
    def group_id(self) -> str:
        if self.group.id:
            return self.group.id
        raw = f"{self.role}-{self.nccl_host}-{self.nccl_port}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", raw)

    @property
    def cudagraph_disabled(self) -> bool:
        return self.role == "prefill" if self.disable_cudagraph is None else self.disable_cudagraph

    @property
    def mps_enabled(self) -> bool:
        return self.engine == "lightllm" if self.mps is None else self.mps

    @property
    def api_port(self) -> int:
        return self.port + 1000 if self.api.port is None else self.api.port

    @property
    def node_id(self) -> str:
        if self.registration.node_id:
            return self.registration.node_id
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.role}-{self.host}-{self.port}")

    @property
    def engine_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _KeyError(ValueError):
    """A cross-field check's failure, carrying the key it is about."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        super().__init__(f"{key} = {value!r}: {reason}")
        self.key, self.value, self.reason = key, value, reason


def signal_number(name: str) -> signal.Signals:
    upper = name.upper()
    try:
        return signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]
    except KeyError:
        raise ValueError("must be a signal name such as TERM, INT, QUIT or KILL") from None


def check_host(value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.split(".")
    if not 0 < len(value) <= 253 or not all(HOST_LABEL.match(label) for label in labels):
        raise ValueError("must be an IP address or a host name")


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); brackets around an IPv6 host are removed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    check_host(host)
    return host, int(port)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides (``{"restart.startsecs": 1}``) to a nested dict."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        target = merged
        for section in sections:
            existing = target.get(section)
            target[section] = dict(existing) if isinstance(existing, dict) else {}
            target = target[section]
        target[key] = value
    return merged


def secrets_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Tokens from the environment (never on the command line, which ``ps`` shows)."""
    names = {
        "api.token": "PDCTL_AGENT_TOKEN",
        "registration.token": "PDCTL_REGISTER_TOKEN",
        "registration.master_admin_token": "PDCTL_ADMIN_TOKEN",
    }
    return {key: env[name] for key, name in names.items() if env.get(name)}


def load_config(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> NodeConfig:
    """The file (if any), then environment secrets, then CLI overrides; validated."""
    data = read_toml(path) if path is not None else {}
    data = merge_overrides(data, secrets_from_env(env or {}))
    data = merge_overrides(data, overrides or {})
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> NodeConfig:
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line per problem: ``tp = 0: Input should be greater than or equal to 1``."""
    lines = []
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _KeyError):
            lines.append(f"{cause.key} = {cause.value!r}: {cause.reason}")
            continue
        key = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif error["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (value {error['input']!r})")
        elif key in SECRET_KEYS:  # never echo a secret
            lines.append(f"{key}: {message}")
        else:
            lines.append(f"{key} = {error['input']!r}: {message}")
    return "invalid config: " + "; ".join(lines)
