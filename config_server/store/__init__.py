"""Registry stores: in-memory (one replica) and etcd (shared by replicas, survives restarts)."""

from __future__ import annotations

from config_server.settings import ConfigServerSettings
from config_server.store.base import Store


def open_store(settings: ConfigServerSettings) -> Store:
    """The store the settings name; etcd (and grpc) are imported only when asked for."""
    if settings.store == "memory":
        from config_server.store.memory import MemoryStore

        return MemoryStore()
    if settings.store == "etcd":
        from config_server.store.etcd import EtcdStore

        return EtcdStore(list(settings.etcd_endpoints), prefix=settings.etcd_prefix)
    raise ValueError(f"unknown store {settings.store!r}: memory or etcd")
