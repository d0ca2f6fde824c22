"""The etcd store (``aetcd``): state survives config-server restarts and is shared by replicas.

Layout under the prefix (default ``/pdctl``):
``<prefix>/reg/<kind>/<id>``  a registration's JSON, attached to its own lease (TTL = ttl_s);
``<prefix>/ids/<counter>``    the next free id of a counter, advanced by compare-and-swap.

Reads come from the replica's ``View``, fed by one etcd watch per replica: loaded from a
range read at revision R, then watched from R + 1. When etcd restarts or a connection
drops, the watch resumes from the last revision applied, so no change is missed; when that
revision was compacted away, the view reloads (watchers then get a full snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aetcd
import orjson
from aetcd.exceptions import ClientError, RevisionCompactedError

from config_server.store.base import INT64_MAX, CounterExhausted, Store, StoreUnavailable
from config_server.store.view import Change, Item, View

log = logging.getLogger(__name__)

# Reconnect quickly after an etcd restart (gRPC's default backoff grows to 120 s).
GRPC_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}
MAX_CAS_ATTEMPTS = 100
# etcd raises shorter lease TTLs to 1.5 election timeouts (2 s with its default timing); ask
# for at least that, so that a renewal sees the TTL it asked for and keeps the lease.
ETCD_MIN_TTL_S = 2


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``http://`` allowed, as etcdctl writes it) -> (host, port)."""
    text = endpoint.strip().removeprefix("http://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"etcd endpoint must be host:port, got {endpoint!r}")
    return host.strip("[]"), int(port)


@dataclass
class _Batch:
    """Allocations waiting for one compare-and-swap that reserves all their ranges at once."""

    waiters: list[asyncio.Future[int]] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


class EtcdStore(Store):
    def __init__(
        self,
        endpoints: list[str],
        *,
        prefix: str = "/pdctl",
        client_factory: Callable[..., aetcd.Client] = aetcd.Client,
        wall_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        op_timeout_s: float = 3.0,
        retry_max_s: float = 1.0,
        max_changes: int = 10_000,
    ) -> None:
        if not endpoints:
            raise ValueError("the etcd store needs at least one endpoint")
        self._endpoints = [parse_endpoint(e) for e in endpoints]
        self._endpoint_index = 0
        self._reg_prefix = prefix.rstrip("/") + "/reg/"
        self._ids_prefix = prefix.rstrip("/") + "/ids/"
        self._client_factory = client_factory
        self._wall_ns = wall_ns
        self._sleep = sleep
        self._op_timeout_s = op_timeout_s
        self._retry_max_s = retry_max_s
        self.view = View(max_changes)
        self._client: aetcd.Client | None = None
        self._loaded = False
        self.watching = False
        self._follower: asyncio.Task[None] | None = None
        self._batches: dict[tuple[str, int, int], _Batch] = {}
        self._counters: dict[str, tuple[int, int]] = {}  # counter -> (next id, mod revision)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._follower = asyncio.create_task(self._follow(), name="etcd-store-watch")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()

    @property
    def ready(self) -> bool:
        """Loaded once. While etcd is down afterwards, reads serve the last view (writes 503)."""
        return self._loaded

    # -- writes ---------------------------------------------------------------------------
    async def put(
        self, key: str, data: dict[str, Any], ttl_s: float, if_mod_revision: int | None = None
    ) -> int:
        if not self._loaded:
            raise StoreUnavailable("the etcd store has not loaded its data yet")
        ttl = max(ETCD_MIN_TTL_S, math.ceil(ttl_s))
        old = self.view.get(key)
        lease_id = 0
        if old is not None and old.lease:
            reply = await self._call(lambda c: c.refresh_lease(old.lease))
            if reply is not None and reply.TTL == ttl:
                lease_id = old.lease  # alive, same TTL: the refresh was the renewal
        if not lease_id:
            lease_id = (await self._call(lambda c: c.lease(ttl))).id
        etcd_key, value = self._etcd_key(key), orjson.dumps(data)
        if if_mod_revision is None:
            reply = await self._call(lambda c: c.put(etcd_key, value, lease=lease_id))
            revision: int = reply.header.revision
            return revision
        succeeded, replies = await self._call(
            lambda c: c.transaction(
                compare=[c.transactions.mod(etcd_key) == if_mod_revision],
                success=[c.transactions.put(etcd_key, value, lease=lease_id)],
                failure=[],
            )
        )
        return replies[0].response_put.header.revision if succeeded else 0

    async def delete(self, key: str, if_mod_revision: int | None = None) -> int:
        if not self._loaded:
            raise StoreUnavailable("the etcd store has not loaded its data yet")
        etcd_key = self._etcd_key(key)
        if if_mod_revision is None:
            reply = await self._call(lambda c: c.delete(etcd_key))
            return reply.header.revision if reply is not None else 0
        # A lease left without keys lapses by itself; no revoke needed.
        succeeded, replies = await self._call(
            lambda c: c.transaction(
                compare=[c.transactions.mod(etcd_key) == if_mod_revision],
                success=[c.transactions.delete(etcd_key)],
                failure=[],
            )
        )
        deleted = succeeded and replies[0].response_delete_range.deleted
        return replies[0].response_delete_range.header.revision if deleted else 0

    async def allocate(self, counter: str, size: int, floor: int) -> int:
        """Concurrent allocations on this replica share one compare-and-swap."""
        batch = self._batches.setdefault((counter, size, floor), _Batch())
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        if batch.flusher is None:
            batch.flusher = asyncio.create_task(self._flush(batch, counter, size, floor))
        return await waiter

    async def _flush(self, batch: _Batch, counter: str, size: int, floor: int) -> None:
        try:
            while batch.waiters:
                waiters, batch.waiters = batch.waiters, []
                try:
                    start = await self._reserve(counter, size * len(waiters), floor)
                except Exception as exc:  # every waiter of this round gets the store's error
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for i, waiter in enumerate(waiters):
                    if not waiter.done():  # a cancelled request's range is simply never used
                        waiter.set_result(start + i * size)
        finally:
            batch.flusher = None

    async def _reserve(self, counter: str, total: int, floor: int) -> int:
        key = (self._ids_prefix + counter).encode()
        known = self._counters.get(counter)
        for _ in range(MAX_CAS_ATTEMPTS):
            if known is None:
                start = max(floor, self._wall_ns())  # a new counter starts at the clock
            else:
                start = known[0]
            end = start + total
            if end > INT64_MAX:
                raise CounterExhausted(f"id counter {counter!r} would pass 2**63 - 1")
            swap = functools.partial(self._swap, key=key, known=known, value=str(end).encode())
            succeeded, replies = await self._call(swap)
            if succeeded:
                self._counters[counter] = (end, replies[0].response_put.header.revision)
                return start
            current = replies[0]  # [(value, Get)] or [] when the key does not exist
            known = (int(current[0][0]), current[0][1].mod_revision) if current else None
        raise StoreUnavailable(f"id counter {counter!r} is too contended; retry")

    @staticmethod
    async def _swap(
        c: aetcd.Client, *, key: bytes, known: tuple[int, int] | None, value: bytes
    ) -> Any:
        """Write ``value`` if the counter is still as known (absent when None); else read it."""
        if known is None:
            unchanged = c.transactions.version(key) == 0
        else:
            unchanged = c.transactions.mod(key) == known[1]
        return await c.transaction(
            compare=[unchanged],
            success=[c.transactions.put(key, value)],
            failure=[c.transactions.get(key)],
        )

    # -- the watch that feeds the view ----------------------------------------------------
    async def _follow(self) -> None:
        delay, reload, failures = 0.05, True, 0
        while True:
            client = self._connected_client()
            try:
                if reload:
                    await self._load(client)
                    reload = False
                watch = await client.watch_prefix(
                    self._reg_prefix.encode(), start_revision=self.view.head + 1
                )
                self.watching = True
                delay, failures = 0.05, 0
                log.info("watching etcd from revision %d", self.view.head + 1)
                async for event in watch:
                    self._apply(event)
            except RevisionCompactedError as exc:
                log.warning("etcd compacted past revision %d (%s); reloading", self.view.head, exc)
                reload = True
            except (ClientError, TimeoutError, OSError) as exc:
                failures += 1
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "etcd unreachable (%s); the watch resumes after revision %d",
                    exc or type(exc).__name__,
                    self.view.head,
                )
                await self._rotate(client)
            except Exception:  # never let the view silently stop following etcd
                log.exception("etcd watch failed; reloading")
                reload = True
            finally:
                self.watching = False
            await self._sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _load(self, client: aetcd.Client) -> None:
        reply = await client.get_prefix(self._reg_prefix.encode())
        items = [item for kv in reply if (item := self._item(kv)) is not None]
        self.view.reset(reply.header.revision, items)
        self._loaded = True
        log.info(
            "loaded %d registrations from etcd at revision %d", len(items), reply.header.revision
        )

    def _apply(self, event: Any) -> None:
        kv = event.kv
        key = kv.key.decode()[len(self._reg_prefix) :]
        if event.kind == "DELETE":
            self.view.apply(Change("delete", key, None, kv.mod_revision))
            return
        item = self._item(kv)
        if item is not None:
            self.view.apply(Change("put", key, item, kv.mod_revision))

    def _item(self, kv: Any) -> Item | None:
        key = kv.key.decode()[len(self._reg_prefix) :]
        try:
            data = orjson.loads(kv.value)
        except orjson.JSONDecodeError:
            log.warning("ignoring etcd key %r: not JSON", kv.key)
            return None
        return Item(key, data, kv.create_revision, kv.mod_revision, kv.lease)

    # -- connections ----------------------------------------------------------------------
    def _etcd_key(self, key: str) -> bytes:
        return (self._reg_prefix + key).encode()

    def _connected_client(self) -> aetcd.Client:
        if self._client is None:
            host, port = self._endpoints[self._endpoint_index]
            self._client = self._client_factory(
                host=host, port=port, timeout=self._op_timeout_s, options=GRPC_OPTIONS
            )
        return self._client

    async def _call(self, op: Callable[[aetcd.Client], Awaitable[Any]]) -> Any:
        client = self._connected_client()
        try:
            return await op(client)
        except (ClientError, TimeoutError, OSError) as exc:
            await self._rotate(client)
            raise StoreUnavailable(f"etcd: {exc or type(exc).__name__}") from exc

    async def _rotate(self, failed: aetcd.Client) -> None:
        """With several endpoints, move to the next one after a failure."""
        if len(self._endpoints) == 1 or self._client is not failed:
            return
        self._client = None
        self._endpoint_index = (self._endpoint_index + 1) % len(self._endpoints)
        with contextlib.suppress(Exception):
            await failed.close()  # type: ignore[union-attr]  # aetcd is untyped
