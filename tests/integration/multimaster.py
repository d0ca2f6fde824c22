"""A config server, several masters and simulated nodes that find the masters through it."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from pdlocal.cluster import (
    FAST_TIMING,
    Proc,
    ProcGroup,
    SimNodeProc,
    free_port,
    start_master_proc,
    start_sim_node,
    wait_until,
)
from pdlocal.registry import ConfigServer, start_config_server


@dataclass
class MasterProc:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def readiness(self) -> dict:
        try:
            return httpx.get(f"{self.url}/readiness", timeout=1, verify=False).json()
        except (httpx.HTTPError, ValueError):
            return {}


@dataclass
class MultiMasterCluster:
    group: ProcGroup
    config: ConfigServer | None = None
    masters: list[MasterProc] = field(default_factory=list)
    nodes: list[SimNodeProc] = field(default_factory=list)

    def start_config_server(self, *args: str, port: int | None = None) -> ConfigServer:
        self.config = start_config_server(self.group, *args, port=port)
        return self.config

    def start_master(
        self, *extra: str, port: int | None = None, config: ConfigServer | None = None
    ) -> MasterProc:
        config = config or self.config
        assert config is not None
        port = port or free_port()
        where = ["--config_server_host", "127.0.0.1", "--config_server_port", str(config.port)]
        args = [*where, "--lease_ttl", "3", "--kv_move_timeout", "5", *extra]
        master = MasterProc(
            port, start_master_proc(self.group, f"master{len(self.masters)}", port, *args)
        )
        self.masters.append(master)
        return master

    def add_node(
        self, mode: str, index: int, *extra: str, config: ConfigServer | None = None
    ) -> SimNodeProc:
        server = config or self.config
        assert server is not None
        host = f"127.0.0.{110 + index + (0 if mode == 'prefill' else 50)}"
        where = ["--config_server_host", "127.0.0.1", "--config_server_port", str(server.port)]
        args = [*where, "--config_server_poll_s", "0.5", *FAST_TIMING, *extra]
        node = start_sim_node(self.group, mode, index, host, *args)
        self.nodes.append(node)
        return node

    def wait_joined(self, masters: list[MasterProc], prefill: int, decode: int) -> None:
        def joined() -> bool:
            for master in masters:
                body = master.readiness()
                if (body.get("prefill_nodes"), body.get("decode_nodes")) != (prefill, decode):
                    return False
            return True

        wait_until(joined, 30, f"{prefill}P+{decode}D nodes on {len(masters)} master(s)")
