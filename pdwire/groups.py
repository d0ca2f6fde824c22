"""The ``/v1/groups`` API's models: one multi-node engine instance supervised as a group.

A LightLLM instance spread over ``nnodes`` hosts (``--nnodes/--node_rank/--nccl_host``)
cannot lose one rank and keep serving: its ranks share NCCL communicators. Each rank's
node agent joins the instance's group record in the config server; the record's
``generation`` counts the group's restarts. A rank whose engine fails asks for the next
generation (a compare-and-set on the generation it ran at); every agent that sees a newer
generation restarts its own engine. A rank that reaches FATAL marks the generation FATAL
and the others stop. No I/O here: the config server and the agents both validate with these.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pdwire.api import MAX_TTL_S

MAX_NNODES = 1024
MAX_REASON = 500
GroupState = Literal["STARTING", "RUNNING", "FATAL", "INCOMPLETE"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupJoin(_Body):
    """``PUT /v1/groups/{id}``: create the group at ``generation`` or renew its lease."""

    nnodes: int = Field(ge=1, le=MAX_NNODES)
    rank: int = Field(ge=0, lt=MAX_NNODES)
    generation: int = Field(default=0, ge=0, lt=2**63)
    ttl_s: float = Field(default=30.0, ge=1.0, le=MAX_TTL_S)


class GroupRestart(_Body):
    """``POST /v1/groups/{id}/restart``: the rank's engine failed while at ``generation``."""

    rank: int = Field(ge=0, lt=MAX_NNODES)
    generation: int = Field(ge=0, lt=2**63)
    reason: str = Field(max_length=MAX_REASON)


class GroupFatal(GroupRestart):
    """``POST /v1/groups/{id}/fatal``: the rank gave up (Supervisor's FATAL)."""


class GroupDrain(_Body):
    """``POST /v1/groups/{id}/drain``: every rank drains (and stops once drained)."""

    stop: bool = False


class GroupUndrain(_Body):
    """``POST /v1/groups/{id}/undrain``: every rank takes requests again (an empty body)."""


class GroupEvent(BaseModel):
    rank: int
    generation: int
    reason: str
    at: float


class GroupRecord(BaseModel):
    """As the config server stores a group (times are Unix seconds)."""

    id: str
    kind: Literal["group"] = "group"
    nnodes: int
    generation: int
    fatal: GroupEvent | None = None
    last_restart: GroupEvent | None = None
    drain: dict[str, Any] | None = None
    ttl_s: float
    created_at: float
    updated_at: float
    lease_expires_at: float


class GroupView(GroupRecord):
    """As ``GET /v1/groups`` lists it: the record, its state and its ranks' node records."""

    state: GroupState
    members: dict[str, dict[str, Any]] = Field(default_factory=dict)
