"""Group records (``group/<id>``): the restart generation of one multi-node instance.

Every change is a compare-and-set on the record's store revision, retried a few times, so
any number of agents and config server replicas (over etcd) agree on one generation: two
ranks that fail at once ask for ``generation + 1`` from the same generation and only one
bump happens; the other rank reads the new generation and follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config_server.errors import ApiError, NotFound, ServiceUnavailable
from config_server.registry import Registry, check_id
from config_server.store.view import Item, View
from pdwire.groups import GroupDrain, GroupFatal, GroupJoin, GroupRestart

KIND = "group"
CAS_ATTEMPTS = 8
RUNNING_STATES = frozenset({"RUNNING", "DRAINING", "DRAINED"})


class Conflict(ApiError):
    status = 409
    type = "conflict_error"


class GroupRegistry:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @property
    def _view(self) -> View:
        return self._registry.store.view

    def _item(self, group_id: str) -> Item | None:
        return self._view.get(f"{KIND}/{group_id}")

    async def _update(
        self, group_id: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Apply ``change`` to the current record (None: absent) until the CAS holds;
        ``change`` returning None leaves the record as it is."""
        check_id(group_id)
        for _ in range(CAS_ATTEMPTS):
            item = self._item(group_id)
            current = item.data if item is not None else None
            new = change(current)
            if new is None:
                if current is None:
                    raise NotFound(f"no group {group_id!r} is registered", code="unknown_group")
                return current
            now = self._registry.wall()
            new = {**new, "updated_at": now, "lease_expires_at": now + new["ttl_s"]}
            expected = item.mod_revision if item is not None else 0
            if await self._registry.write(new, if_mod_revision=expected):
                return new
            await self._view.wait_beyond(self._view.head, 0.2)  # another write: catch up
        raise ServiceUnavailable(
            f"group {group_id!r} changed {CAS_ATTEMPTS} times while being updated; retry",
            code="contended",
        )

    async def join(self, group_id: str, body: GroupJoin) -> dict[str, Any]:
        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                now = self._registry.wall()
                return {
                    "id": group_id,
                    "kind": KIND,
                    "nnodes": body.nnodes,
                    "generation": body.generation,
                    "fatal": None,
                    "last_restart": None,
                    "drain": None,
                    "ttl_s": body.ttl_s,
                    "created_at": now,
                }
            if current["nnodes"] != body.nnodes:
                raise Conflict(
                    f"nnodes: group {group_id!r} has {current['nnodes']} ranks, "
                    f"rank {body.rank} says {body.nnodes}",
                    code="nnodes_mismatch",
                )
            return {**current, "ttl_s": max(current["ttl_s"], body.ttl_s)}

        self._check_rank(body.rank, body.nnodes)
        return await self._update(group_id, change)

    async def restart(self, group_id: str, body: GroupRestart) -> dict[str, Any]:
        """The next generation if the group is still at ``body.generation``."""

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current["generation"] != body.generation:
                return None  # someone already moved it on: follow the current one
            self._check_rank(body.rank, current["nnodes"])
            event = self._event(body)
            event["generation"] = body.generation + 1
            return {
                **current,
                "generation": body.generation + 1,
                "fatal": None,
                "drain": None,
                "last_restart": event,
            }

        return await self._update(group_id, change)

    async def fatal(self, group_id: str, body: GroupFatal) -> dict[str, Any]:
        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current["generation"] != body.generation or current["fatal"]:
                return None
            self._check_rank(body.rank, current["nnodes"])
            return {**current, "fatal": self._event(body)}

        return await self._update(group_id, change)

    async def drain(self, group_id: str, body: GroupDrain) -> dict[str, Any]:
        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None:
                return None
            drain = {"stop": body.stop, "at": self._registry.wall()}
            return {**current, "drain": {**drain, "generation": current["generation"]}}

        return await self._update(group_id, change)

    async def undrain(self, group_id: str) -> dict[str, Any]:
        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current["drain"] is None:
                return None
            return {**current, "drain": None}

        return await self._update(group_id, change)

    def _event(self, body: GroupRestart) -> dict[str, Any]:
        return {
            "rank": body.rank,
            "generation": body.generation,
            "reason": body.reason,
            "at": self._registry.wall(),
        }

    @staticmethod
    def _check_rank(rank: int, nnodes: int) -> None:
        if rank >= nnodes:
            raise Conflict(f"rank: {rank} is not below nnodes ({nnodes})", code="bad_rank")

    # -- reads ----------------------------------------------------------------------------
    def get(self, group_id: str) -> dict[str, Any]:
        check_id(group_id)
        self._registry.check_ready()
        item = self._item(group_id)
        if item is None:
            raise NotFound(f"no group {group_id!r} is registered", code="unknown_group")
        return self._joined(item.data, self._members())

    def list(self) -> list[dict[str, Any]]:
        self._registry.check_ready()
        items = sorted(self._view.items(KIND + "/"), key=lambda item: item.create_revision)
        members = self._members()
        return [self._joined(item.data, members) for item in items]

    def _members(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Node records by group id and rank (from the ``info.group`` agents register)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for node in self._registry.list("node"):
            group = (node.get("info") or {}).get("group")
            if isinstance(group, dict) and isinstance(group.get("id"), str):
                out.setdefault(group["id"], {})[str(group.get("rank"))] = node
        return out

    @staticmethod
    def _joined(
        record: dict[str, Any], members: dict[str, dict[str, dict[str, Any]]]
    ) -> dict[str, Any]:
        ranks = members.get(record["id"], {})
        return {**record, "state": group_state(record, ranks), "members": ranks}


def group_state(record: dict[str, Any], ranks: dict[str, dict[str, Any]]) -> str:
    """FATAL once a rank gave up; RUNNING when every rank runs at the current generation."""
    if record.get("fatal"):
        return "FATAL"
    if len([r for r in ranks if r.isdigit() and int(r) < record["nnodes"]]) < record["nnodes"]:
        return "INCOMPLETE"
    current = all(
        node.get("state") in RUNNING_STATES
        and (node.get("info") or {}).get("group", {}).get("generation") == record["generation"]
        for node in ranks.values()
    )
    return "RUNNING" if current else "STARTING"
