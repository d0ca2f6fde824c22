"""A config server's settings, built by the CLI (or a test) before anything starts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigServerSettings:
    host: str = "127.0.0.1"
    port: int = 60088
    store: str = "memory"  # or "etcd"
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    etcd_prefix: str = "/pdctl"
    admin_token: str | None = None
    register_token: str | None = None
    allow_cidrs: tuple[str, ...] = ()  # LightLLM endpoints: empty = every peer
    lightllm_ttl_s: float = 10.0  # lease of a master registered over the websocket
    lightllm_version: str = "v1.1.0"
    max_body_bytes: int = 64 * 1024
    # /pd_master_register frames: a pickled PD_Master_Obj (~130 bytes), then "heartbeat"
    ws_max_size: int = 64 * 1024
    max_watch_timeout_s: float = 60.0
