"""Our JSON API's models: the config server's ``/v1`` registry and the shared error body.

Masters and node agents register (and renew) with ``PUT /v1/{masters|nodes}/{id}`` and a
``RegistrationRequest``; the config server answers with a ``Record``. Every error is an
``ErrorBody``. No I/O here: servers and clients both validate with these models.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Kind = Literal["master", "node"]
Role = Literal["prefill", "decode"]

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STATE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
DEFAULT_TTL_S = 10.0
MAX_TTL_S = 86400.0


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str


class ErrorBody(BaseModel):
    """``{"error": {"type", "code", "message"}}``: what every failed request answers."""

    error: ErrorDetail


def is_valid_id(value: str) -> bool:
    """Registry ids: decimal 128-bit ints (LightLLM node ids) or other short safe strings."""
    return bool(ID_PATTERN.match(value))


def decimal(text: str, max_digits: int = 39) -> int | None:
    """``text`` as a non-negative int if it is 1-``max_digits`` ASCII digits, else None.

    ``str.isdigit`` also takes "²" and other Unicode digits, which ``int`` refuses, and
    ``int`` of thousands of digits is slow and then refused: neither may reach ``int``.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def base_url(address: str) -> str:
    """``host:port`` or a URL -> ``http://host:port`` (or the URL) without a trailing slash."""
    return (address if "://" in address else f"http://{address}").rstrip("/")


def check_address(value: str) -> str:
    """``host:port`` with an IPv4 address, a bracketed IPv6 address or a DNS name."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address must be host:port, got {value!r}")
    number = decimal(port, 5)
    if number is None or not 0 < number < 65536:
        raise ValueError(f"address port must be 1-65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"address has a bad IPv6 host {host!r}") from None
        return value
    if len(host) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"address host must be an IP address or a DNS name, got {host!r}")
    return value


class RegistrationRequest(BaseModel):
    """Body of ``PUT /v1/masters/{id}`` and ``PUT /v1/nodes/{id}`` (register or renew)."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="where the master or node serves: ip:port")
    role: Role | None = Field(default=None, description="prefill or decode; nodes only")
    state: str | None = Field(
        default=None,
        description="RUNNING, STARTING, BACKOFF, FATAL, DRAINING, ...; masters: serving",
    )
    ttl_s: float = Field(default=DEFAULT_TTL_S, ge=1.0, le=MAX_TTL_S)
    info: dict[str, Any] = Field(
        default_factory=dict,
        description="free-form: pid, restarts, gpus, engine_state, load, connected_masters, ...",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("state")
    @classmethod
    def _state(cls, value: str | None) -> str | None:
        if value is not None and not STATE_PATTERN.match(value):
            raise ValueError(
                f"state must be a letter then up to 31 letters, digits, '_' or '-', got {value!r}"
            )
        return value


class Record(BaseModel):
    """A registration as the config server stores and lists it (times are Unix seconds)."""

    id: str
    kind: Kind
    address: str
    role: Role | None = None
    state: str
    ttl_s: float
    info: dict[str, Any] = Field(default_factory=dict)
    registered_at: float
    last_heartbeat: float
    lease_expires_at: float
    # master_report: a node without an agent, listed because masters report it connected
    registered_via: Literal["v1", "lightllm_websocket", "master_report"] = "v1"


class RecordList(BaseModel):
    items: list[Record]


class WatchEvent(BaseModel):
    type: Literal["put", "delete"]
    kind: Kind
    id: str
    record: Record | None = None


class WatchResponse(BaseModel):
    """``GET /v1/watch``: changes after the asked revision.

    ``reset`` is true when the answer is a full snapshot (as puts) rather than the changes
    since the asked revision: revision 0, or a revision this server cannot continue from
    (too old, or from before a memory-store restart). A client then replaces its view.
    """

    revision: int
    events: list[WatchEvent]
    reset: bool = False


class IdRange(BaseModel):
    """LightLLM's id range answer: ids in ``[start_id, end_id)``."""

    start_id: int
    end_id: int
