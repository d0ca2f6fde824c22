"""Config server registry cost on each store: registrations/s and /v1/nodes latency.

Starts a config server (and, for the etcd store, an etcd) on loopback, registers N nodes
(PUT /v1/nodes/{id}) over C keep-alive connections, renews them all once more, then times
sequential GET /v1/nodes (all N records) and GET /v1/nodes?role=prefill (half of them).
The client is a few lines of asyncio HTTP/1.1 so that it is not what gets measured.

    python -m benchmarks.config_server_registry [--nodes 1000] [--smoke]

Prints a table and writes benchmarks/results/config_server_registry.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmark_client.localcluster import ProcGroup
from config_server.localrun import EtcdServer, etcd_binary, start_config_server

RESULTS = Path(__file__).resolve().parent / "results"


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
    }


async def _body_bytes(port: int) -> int:
    conn = await Connection("127.0.0.1", port).open()
    try:
        return len((await conn.request("GET", "/v1/nodes"))[1])
    finally:
        conn.close()


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'store':<7} {'nodes':>6} {'register/s':>11} {'renew/s':>9} "
        f"{'/v1/nodes p50':>14} {'p99':>8} {'?role= p50':>11} {'p99':>8} {'body':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['store']:<7} {r['nodes']:>6} {r['register_per_s']:>11.0f} "
            f"{r['renew_per_s']:>9.0f} {r['nodes_p50_ms']:>11.2f} ms {r['nodes_p99_ms']:>5.2f} ms"
            f" {r['nodes_role_p50_ms']:>8.2f} ms {r['nodes_role_p99_ms']:>5.2f} ms "
            f"{r['nodes_body_bytes'] / 1024:>6.0f} KiB"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--gets", type=int, default=200, help="timed GET /v1/nodes per store")
    p.add_argument("--stores", default="memory,etcd")
    p.add_argument("--smoke", action="store_true", help="100 nodes, 20 GETs (CI)")
    p.add_argument("--out", type=Path, default=RESULTS / "config_server_registry.json")
    args = p.parse_args()
    if args.smoke:
        args.nodes, args.gets = 100, 20
    rows = [
        measure(store, args.nodes, args.concurrency, args.gets) for store in args.stores.split(",")
    ]
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    args.out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
