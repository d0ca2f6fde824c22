"""Masters registered over LightLLM's websocket ``/pd_master_register``.

LightLLM's config server lists a master while its socket is open. Here the socket keeps a
leased record alive instead (renewed every third of ``ttl_s``), so a replica that dies
without closing the socket leaves nothing behind for longer than the lease, and every
replica lists masters registered on any of them.

A master that also registers through ``/v1`` (as ours does) owns its record through that
lease: from the moment the session sees a ``/v1`` record it stops writing, and it never
deletes a record it did not write last.

Master ids are public (``/registered_objects``), so a live record is taken only from the
address that registered it (a master reconnecting), never by another peer (``Conflict``);
a session whose record was taken over stops writing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from config_server.registry import MAX_NODE_ID, Registry, record_key
from config_server.store.base import StoreError
from pdwire.api import check_address
from pdwire.errors import MalformedMessageError
from pdwire.pd_io import PD_Master_Obj

log = logging.getLogger(__name__)


def check_master_obj(obj: PD_Master_Obj) -> None:
    if not 0 <= obj.node_id < MAX_NODE_ID:
        raise MalformedMessageError(f"PD_Master_Obj node_id {obj.node_id} is not a 128-bit id")
    try:
        check_address(obj.host_ip_port)
    except ValueError as exc:
        raise MalformedMessageError(f"PD_Master_Obj host_ip_port: {exc}") from None


class LightLLMMasterSession:
    def __init__(
        self,
        registry: Registry,
        obj: PD_Master_Obj,
        peer: str,
        ttl_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        peer_host: str | None = None,
    ) -> None:
        check_master_obj(obj)
        self._registry = registry
        self.obj = obj
        self.record_id = str(obj.node_id)
        self._peer = peer
        self._peer_host = peer_host
        self._ttl_s = ttl_s
        self._sleep = sleep
        self.deferred = False  # a /v1 registration owns the record
        self._revision: int | None = None  # of the last record this session wrote

    async def renew(self) -> None:
        """Write the record; ``Conflict`` if another peer's record is live at first."""
        current = self._registry.item("master", self.record_id)
        if self._revision is None:
            self._registry.check_owner("master", self.record_id, self._peer_host)
        elif current is not None and current.mod_revision != self._revision:
            self.deferred = True  # written by another session of the same peer since
        if current is not None and current.data.get("registered_via") == "v1":
            self.deferred = True
        if self.deferred:
            return
        # Write only over what was read: a /v1 registration that landed meanwhile (and
        # that this replica has not seen yet) must win, not be overwritten.
        expected = current.mod_revision if current is not None else 0
        record = self._registry.new_record(
            "master",
            self.record_id,
            address=self.obj.host_ip_port,
            role=None,
            state="serving",
            ttl_s=self._ttl_s,
            info={"peer": self._peer},
            via="lightllm_websocket",
            peer_host=self._peer_host,
        )
        revision = await self._registry.write(record, if_mod_revision=expected)
        if revision:
            self._revision = revision

    async def keep_alive(self) -> None:
        """Renew every third of the lease until cancelled; a failed renewal is retried."""
        while True:
            await self._sleep(self._ttl_s / 3)
            try:
                await self.renew()
            except StoreError as exc:
                log.warning("cannot renew LightLLM master %s: %s", self.record_id, exc)

    async def release(self) -> None:
        """Delete the record if this session wrote it last."""
        if self.deferred or self._revision is None:
            return
        key = record_key("master", self.record_id)
        try:
            await self._registry.store.delete(key, if_mod_revision=self._revision)
        except StoreError as exc:
            log.warning("cannot remove LightLLM master %s (its lease will): %s", key, exc)
