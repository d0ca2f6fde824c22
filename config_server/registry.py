"""The registry of masters and nodes: the one owner of registrations, over a ``Store``.

Records are keyed ``master/<id>`` and ``node/<id>``. A master registered both ways (our
``/v1`` lease and LightLLM's websocket, see ``lightllm_masters.py``) has one record; the
``/v1`` registration owns it once made. Reads come from the store's view; after a write the
registry waits (briefly) until its own view shows it, so a client reads its own writes.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from config_server.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from config_server.node_view import joined_nodes
from config_server.store.base import Store
from config_server.store.view import Change, Item
from pdwire.api import RegistrationRequest, is_valid_id
from pdwire.pd_io import PD_Master_Obj

KINDS = ("master", "node")
DEFAULT_STATE = {"master": "serving", "node": "RUNNING"}
MAX_NODE_ID = 1 << 128


@dataclass(frozen=True)
class IdCounter:
    """One of LightLLM's id range endpoints: ranges of ``size`` from at least ``floor``."""

    name: str
    size: int
    floor: int


GROUP_REQUEST_IDS = IdCounter("group_request_id", 800_000, 0)
MULTIMODAL_IDS = IdCounter("multimodal_id", 8_000_000, 100_000_000)


def record_key(kind: str, record_id: str) -> str:
    return f"{kind}/{record_id}"


def split_key(key: str) -> tuple[str, str]:
    kind, _, record_id = key.partition("/")
    return kind, record_id


def lightllm_node_id(record_id: str) -> int | None:
    """The int a LightLLM node knows a master by, if this id is one (a decimal 128-bit int)."""
    if not record_id.isdigit():
        return None
    value = int(record_id)
    return value if value < MAX_NODE_ID else None


class Registry:
    def __init__(
        self,
        store: Store,
        *,
        wall: Callable[[], float] = time.time,
        visible_timeout_s: float = 2.0,
    ) -> None:
        self.store = store
        self.wall = wall
        self._visible_timeout_s = visible_timeout_s

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.start()

    def stop_waiting(self) -> None:
        """From any thread or a signal handler: answer every pending long-poll now, so that
        they do not hold the server's shutdown."""
        self._loop.call_soon_threadsafe(self.store.view.close)

    async def close(self) -> None:
        await self.store.close()

    @property
    def ready(self) -> bool:
        return self.store.ready

    def check_ready(self) -> None:
        """Reads before the store has loaded would list nothing, and a LightLLM node told
        "no masters" disconnects from all of them: answer 503 instead (nodes keep theirs)."""
        if not self.store.ready:
            raise ServiceUnavailable("the registry is still loading", code="store_loading")

    # -- writes ---------------------------------------------------------------------------
    async def register(
        self, kind: str, record_id: str, request: RegistrationRequest, peer_host: str | None
    ) -> dict[str, Any]:
        """Register or renew; idempotent. Returns the stored record.

        A live record is renewed only from the address that registered it (``peer_host``):
        ids are public, and the register token is shared by every node agent and master.
        """
        check_id(record_id)
        self.check_owner(kind, record_id, peer_host)
        if kind == "node" and request.role is None:
            raise BadRequest("role is required for nodes: prefill or decode", code="invalid_field")
        if kind == "master" and request.role is not None:
            raise BadRequest("role is only for nodes; leave it out for masters", "invalid_field")
        record = self.new_record(
            kind,
            record_id,
            address=request.address,
            role=request.role,
            state=request.state or DEFAULT_STATE[kind],
            ttl_s=request.ttl_s,
            info=request.info,
            via="v1",
            peer_host=peer_host,
        )
        await self.write(record)
        return record

    def check_owner(self, kind: str, record_id: str, peer_host: str | None) -> None:
        """409 unless the live record (if any) was registered from ``peer_host``."""
        current = self.item(kind, record_id)
        owner = current.data.get("peer_host") if current is not None else None
        if owner is not None and owner != peer_host:
            raise Conflict(
                f"{kind} {record_id!r} is live, registered from {owner}; only that peer may "
                "renew or remove it until its lease ends",
                code=f"{kind}_owned_elsewhere",
            )

    async def deregister(self, kind: str, record_id: str, peer_host: str | None) -> None:
        """Remove a record; ``peer_host`` None (the admin) may remove any."""
        check_id(record_id)
        if peer_host is not None:
            self.check_owner(kind, record_id, peer_host)
        revision = await self.store.delete(record_key(kind, record_id))
        if not revision:
            raise NotFound(f"no {kind} {record_id!r} is registered", code=f"unknown_{kind}")
        await self.store.view.wait_beyond(revision - 1, self._visible_timeout_s)

    def new_record(
        self,
        kind: str,
        record_id: str,
        *,
        address: str,
        role: str | None,
        state: str,
        ttl_s: float,
        info: dict[str, Any],
        via: str,
        peer_host: str | None,
    ) -> dict[str, Any]:
        now = self.wall()
        old = self.store.view.get(record_key(kind, record_id))
        return {
            "id": record_id,
            "kind": kind,
            "address": address,
            "role": role,
            "state": state,
            "ttl_s": ttl_s,
            "info": info,
            "registered_at": old.data.get("registered_at", now) if old else now,
            "last_heartbeat": now,
            "lease_expires_at": now + ttl_s,
            "registered_via": via,
            "peer_host": peer_host,  # the address that owns the record while it lives
        }

    async def write(self, record: dict[str, Any], if_mod_revision: int | None = None) -> int:
        """Store ``record`` (see ``Store.put``); wait until this replica's reads show it."""
        key = record_key(record["kind"], record["id"])
        revision = await self.store.put(key, record, record["ttl_s"], if_mod_revision)
        if revision:
            await self.store.view.wait_beyond(revision - 1, self._visible_timeout_s)
        return revision

    # -- reads ----------------------------------------------------------------------------
    def item(self, kind: str, record_id: str) -> Item | None:
        return self.store.view.get(record_key(kind, record_id))

    def get(self, kind: str, record_id: str) -> dict[str, Any]:
        check_id(record_id)
        self.check_ready()
        item = self.item(kind, record_id)
        if item is None:
            raise NotFound(f"no {kind} {record_id!r} is registered", code=f"unknown_{kind}")
        return item.data

    def list(
        self,
        kind: str,
        roles: Collection[str] | None = None,
        states: Collection[str] | None = None,
        master: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records of one kind in registration order, filtered by role, state, master."""
        self.check_ready()
        records = [item.data for item in self._items(kind)]
        if kind == "node":
            records = joined_nodes(records, (item.data for item in self._items("master")))
        out = []
        for data in records:
            if roles is not None and data.get("role") not in roles:
                continue
            if states is not None and data.get("state") not in states:
                continue
            if master is not None and master not in _connected_masters(data):
                continue
            out.append(data)
        return out

    def _items(self, kind: str) -> builtins.list[Item]:
        return sorted(self.store.view.items(kind + "/"), key=lambda item: item.create_revision)

    def lightllm_masters(self) -> dict[int, PD_Master_Obj]:
        """What ``/registered_objects`` lists: masters with integer ids, in registration order."""
        masters = {}
        for record in self.list("master"):
            node_id = lightllm_node_id(record["id"])
            if node_id is not None:
                masters[node_id] = PD_Master_Obj(node_id=node_id, host_ip_port=record["address"])
        return masters

    async def watch(self, revision: int, timeout_s: float) -> dict[str, Any]:
        """Changes after ``revision``, waiting up to ``timeout_s`` for one; see WatchResponse."""
        self.check_ready()
        view = self.store.view
        if revision > view.head:  # from a replica a little ahead of this one?
            await view.wait_beyond(revision - 1, min(timeout_s, self._visible_timeout_s))
        changes = view.changes_after(revision) if 0 < revision <= view.head else None
        if changes == []:
            await view.wait_beyond(revision, timeout_s)
            changes = view.changes_after(revision)
        if changes is None:
            return self.snapshot()
        events = [_event(c) for c in changes if split_key(c.key)[0] in KINDS]
        return {"revision": view.head, "events": events, "reset": False}

    def snapshot(self) -> dict[str, Any]:
        view = self.store.view
        items = sorted(
            (item for item in view.items() if split_key(item.key)[0] in KINDS),
            key=lambda item: item.create_revision,
        )
        events = [_event(Change("put", item.key, item, item.mod_revision)) for item in items]
        return {"revision": view.head, "events": events, "reset": True}

    # -- id ranges ------------------------------------------------------------------------
    async def allocate(self, counter: IdCounter) -> dict[str, int]:
        start = await self.store.allocate(counter.name, counter.size, counter.floor)
        return {"start_id": start, "end_id": start + counter.size}


def check_id(record_id: str) -> None:
    if not is_valid_id(record_id):
        raise BadRequest(
            f"id must be 1-128 letters, digits, '.', '_' or '-' (not first), got {record_id!r}",
            code="invalid_id",
        )


def _connected_masters(record: dict[str, Any]) -> list[str]:
    masters = record.get("info", {}).get("connected_masters")
    return [str(m) for m in masters] if isinstance(masters, list) else []


def _event(change: Change) -> dict[str, Any]:
    kind, record_id = split_key(change.key)
    record = change.item.data if change.item is not None else None
    return {"type": change.type, "kind": kind, "id": record_id, "record": record}
