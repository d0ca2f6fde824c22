"""``pd-config-server`` / ``python -m config_server``: LightLLM's flag names, plus our store.

Secrets come from the environment rather than the command line (which ``ps`` shows):
PDCTL_ADMIN_TOKEN, PDCTL_REGISTER_TOKEN; also PDCTL_STORE, PDCTL_ETCD_ENDPOINTS,
PDCTL_ALLOW_CIDR.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
from collections.abc import Mapping
from types import FrameType

import uvicorn

from config_server.app import create_app
from config_server.registry import Registry
from config_server.settings import ConfigServerSettings
from config_server.store import open_store
from pdwire.cli import CommandParser, port_number
from pdwire.httpserver import header_timeout_protocol
from pdwire.peers import split_cidrs
from pdwire.structs import LAYOUTS

GC_GEN0_THRESHOLD = 50_000


def build_parser(env: Mapping[str, str]) -> CommandParser:
    p = CommandParser("pd-config-server", __doc__)
    p.add_argument(
        "--run_mode", default="config_server", choices=["config_server"], help="LightLLM's flag"
    )
    p.add_argument("--config_server_host", "--host", dest="host", default="127.0.0.1")
    p.add_argument("--config_server_port", "--port", dest="port", type=port_number, default=60088)
    p.add_argument(
        "--store",
        choices=["memory", "etcd"],
        default=env.get("PDCTL_STORE", "memory"),
        help="memory: one replica, state lost on restart; etcd: shared by replicas "
        "(env PDCTL_STORE)",
    )
    p.add_argument(
        "--etcd-endpoints",
        "--etcd_endpoints",
        dest="etcd_endpoints",
        default=env.get("PDCTL_ETCD_ENDPOINTS", "127.0.0.1:2379"),
        help="host:port,... (env PDCTL_ETCD_ENDPOINTS)",
    )
    p.add_argument("--etcd-prefix", "--etcd_prefix", dest="etcd_prefix", default="/pdctl")
    p.add_argument(
        "--admin-token",
        "--admin_token",
        dest="admin_token",
        default=env.get("PDCTL_ADMIN_TOKEN"),
        help="bearer token for the /v1 listings (env PDCTL_ADMIN_TOKEN)",
    )
    p.add_argument(
        "--register-token",
        "--register_token",
        dest="register_token",
        default=env.get("PDCTL_REGISTER_TOKEN"),
        help="bearer token for /v1 registration (env PDCTL_REGISTER_TOKEN)",
    )
    p.add_argument(
        "--allow-cidr",
        "--allow_cidr",
        dest="allow_cidr",
        action="append",
        default=None,
        help="networks allowed on LightLLM's endpoints, repeatable or comma-separated "
        "(env PDCTL_ALLOW_CIDR; default: every peer)",
    )
    p.add_argument(
        "--lightllm-lease-ttl",
        "--lightllm_lease_ttl",
        dest="lightllm_ttl_s",
        type=float,
        default=10.0,
        help="seconds a websocket-registered master outlives a replica that lost its socket",
    )
    p.add_argument("--lightllm_version", default="v1.1.0", choices=sorted(LAYOUTS))
    p.add_argument("--log_level", default="info")
    return p


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ConfigServerSettings:
    cidr_args = (
        args.allow_cidr if args.allow_cidr is not None else [env.get("PDCTL_ALLOW_CIDR", "")]
    )
    cidrs = split_cidrs(cidr_args)  # fail at start, not on the first request
    return ConfigServerSettings(
        host=args.host,
        port=args.port,
        store=args.store,
        etcd_endpoints=tuple(e.strip() for e in args.etcd_endpoints.split(",") if e.strip()),
        etcd_prefix=args.etcd_prefix,
        admin_token=args.admin_token or None,
        register_token=args.register_token or None,
        allow_cidrs=cidrs,
        lightllm_ttl_s=args.lightllm_ttl_s,
        lightllm_version=args.lightllm_version,
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(os.environ)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args, os.environ)
    except ValueError as exc:
        parser.fail(f"--allow-cidr: {exc}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = Registry(open_store(settings))
    config = uvicorn.Config(
        create_app(registry, settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=header_timeout_protocol(),
        ws="websockets-sansio",
        ws_max_size=1024 * 1024,
        ws_per_message_deflate=False,
        ws_ping_interval=10.0,  # a master whose host vanished is dropped within ~20 s
        ws_ping_timeout=10.0,
        proxy_headers=False,  # the allowlist must see the real peer, not a forwarded header
        timeout_graceful_shutdown=3,
        log_level=args.log_level,
        access_log=False,
    )
    # The listings build a dict per record; at the default gen-0 threshold (700) every
    # listing of 1,000 nodes set off collections whose full passes over the store's records
    # put 30 ms into the listing's p99. The registry makes almost no reference cycles.
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    ConfigServerProcess(config, registry).run()


class ConfigServerProcess(uvicorn.Server):
    """uvicorn's server, ending /v1/watch long-polls as soon as a stop is asked: uvicorn
    waits for requests in flight, and a long-poll may have 60 s to go."""

    def __init__(self, config: uvicorn.Config, registry: Registry) -> None:
        super().__init__(config)
        self._registry = registry

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.started:
            self._registry.stop_waiting()
        super().handle_exit(sig, frame)
