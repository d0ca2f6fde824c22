"""Config server registry cost on each store: registrations/s and /v1/nodes latency.

Starts a config server (and, for the etcd store, an etcd) on loopback, registers N nodes
(PUT /v1/nodes/{id}) over C keep-alive connections, renews them all once more, then times
sequential GET /v1/nodes (all N records) and GET /v1/nodes?role=prefill (half of them).
The client is a few lines of asyncio HTTP/1.1 so that it is not what gets measured.

    python -m benchmarks.config_server_registry [--nodes 1000] [--stores memory,etcd] [--smoke]

Prints a table and writes benchmarks/results/config_server_registry[_smoke].json.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import parser, print_table, write_json
from pdlocal.cluster import ProcGroup
from pdlocal.registry import EtcdServer, etcd_binary, start_config_server


class Connection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for uvicorn's answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            int(v)
            for k, _, v in (h.partition(":") for h in lines[1:])
            if k.lower() == "content-length"
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def node_body(i: int) -> bytes:
    return orjson.dumps(
        {
            "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8019",
            "role": "prefill" if i % 2 == 0 else "decode",
            "state": "RUNNING",
            "ttl_s": 600,
            "info": {
                "pid": 1000 + i,
                "restarts": 0,
                "gpus": [0, 1, 2, 3, 4, 5, 6, 7],
                "engine_state": "RUNNING",
                "load": {"total_token_usage_rate": 0.42, "running_requests": 17},
                "connected_masters": [str(2**100 + 1), str(2**100 + 2)],
            },
        }
    )


async def register_all(port: int, nodes: int, concurrency: int) -> float:
    """Seconds to PUT every node once over ``concurrency`` connections."""
    conns = [await Connection("127.0.0.1", port).open() for _ in range(concurrency)]
    bodies = [node_body(i) for i in range(nodes)]

    async def worker(conn: Connection, ids: range) -> None:
        for i in ids:
            status, reply = await conn.request("PUT", f"/v1/nodes/{2**120 + i}", bodies[i])
            if status != 200:
                raise RuntimeError(f"PUT answered {status}: {reply[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(c, range(k, nodes, concurrency)) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return elapsed


async def latencies_ms(port: int, path: str, count: int, expect_items: int) -> list[float]:
    conn = await Connection("127.0.0.1", port).open()
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            status, body = await conn.request("GET", path)
            samples.append((time.perf_counter() - started) * 1000)
            if status != 200 or len(orjson.loads(body)["items"]) != expect_items:
                raise RuntimeError(f"GET {path} answered {status}")
    finally:
        conn.close()
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(store: str, nodes: int, concurrency: int, gets: int) -> dict[str, Any]:
    group = ProcGroup(Path(tempfile.mkdtemp(prefix=f"pdctl-bench-{store}-")))
    try:
        args = ["--log_level", "warning"]
        if store == "etcd":
            binary = etcd_binary()
            if binary is None:
                raise SystemExit("etcd is not installed (apt-get install -y etcd-server)")
            etcd = EtcdServer(group, binary, group.workdir / "etcd-data").start()
            args += ["--store", "etcd", "--etcd-endpoints", etcd.endpoint]
        server = start_config_server(group, *args)
        register_s = asyncio.run(register_all(server.port, nodes, concurrency))
        renew_s = asyncio.run(register_all(server.port, nodes, concurrency))
        all_ms = asyncio.run(latencies_ms(server.port, "/v1/nodes", gets, nodes))
        half = (nodes + 1) // 2
        role_ms = asyncio.run(latencies_ms(server.port, "/v1/nodes?role=prefill", gets, half))
        body = asyncio.run(_body_bytes(server.port))
    finally:
        group.stop_all()
    return {
        "store": store,
        "nodes": nodes,
        "concurrency": concurrency,
        "register_per_s": nodes / register_s,
        "renew_per_s": nodes / renew_s,
        "nodes_p50_ms": statistics.median(all_ms),
        "nodes_p99_ms": percentile(all_ms, 99),
        "nodes_role_p50_ms": statistics.median(role_ms),
        "nodes_role_p99_ms": percentile(role_ms, 99),
        "nodes_body_bytes": body,
        "errors": 0,  # any failed request aborts the run
    }


async def _body_bytes(port: int) -> int:
    conn = await Connection("127.0.0.1", port).open()
    try:
        return len((await conn.request("GET", "/v1/nodes"))[1])
    finally:
        conn.close()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--gets", type=int, default=200, help="timed GET /v1/nodes per store")
    p.add_argument("--stores", default="memory,etcd")
    args = p.parse_args()
    if args.smoke:
        args.nodes, args.gets = 100, 20
    rows = [
        measure(store, args.nodes, args.concurrency, args.gets) for store in args.stores.split(",")
    ]
    print_table(
        f"config server registry, {args.nodes} nodes, {args.concurrency} connections",
        [
            "store",
            "register/s",
            "renew/s",
            "/v1/nodes p50 ms",
            "p99 ms",
            "?role= p50 ms",
            "p99 ms",
            "body KiB",
            "errors",
        ],
        [
            [
                r["store"],
                r["register_per_s"],
                r["renew_per_s"],
                r["nodes_p50_ms"],
                r["nodes_p99_ms"],
                r["nodes_role_p50_ms"],
                r["nodes_role_p99_ms"],
                r["nodes_body_bytes"] // 1024,
                r["errors"],
            ]
            for r in rows
        ],
    )
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    name = "config_server_registry" + ("_smoke" if args.smoke else "")
    write_json(name, {"machine": machine, "results": rows})


if __name__ == "__main__":
    main()
