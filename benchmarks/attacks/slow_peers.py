"""Peers that hold the master's waits: a config server that stops answering id ranges, and
slowloris clients holding half-sent requests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx

from benchmarks.attacks.attacker import ATTACKER, attacker_socket, registration
from benchmarks.attacks.target import Outcome, Target, generate
from benchmarks.common import QUIET
from pdlocal.cluster import free_port, start_master_proc
from pdlocal.registry import start_config_server


async def id_range_wait(target: Target) -> Outcome:
    """A master whose config server stops answering id ranges: its first request must end
    at the request's deadline (3 s), not after the config server's retries."""
    cfg = start_config_server(target.procs, *QUIET, name="stalled-config")
    port = free_port()
    master = start_master_proc(
        target.procs,
        "stalled-master",
        port,
        *QUIET,
        "--config_server_host",
        "127.0.0.1",
        "--config_server_port",
        str(cfg.port),
        "--request_timeout",
        "3",
    )
    assert cfg.proc.popen is not None
    url = f"ws://127.0.0.1:{port}/pd_register"
    try:
        async with attacker_socket(url) as p, attacker_socket(url) as d:
            await p.send(json.dumps(registration(1, "prefill")))
            await d.send(json.dumps(registration(2, "decode")))
            await asyncio.sleep(0.3)
            os.kill(cfg.proc.popen.pid, signal.SIGSTOP)
            started = time.monotonic()
            reply = await generate(f"http://127.0.0.1:{port}", timeout=30)
            took = time.monotonic() - started
    finally:
        os.kill(cfg.proc.popen.pid, signal.SIGCONT)
        master.stop()
        cfg.proc.stop()
    in_time = reply.status_code == 504 and took < 4.0
    return Outcome(
        "id-range wait on a stalled config server",
        1,
        int(in_time),
        details={"status": reply.status_code, "seconds": round(took, 2)},
    )


async def slowloris(target: Target, seconds: float = 3.0, holders: int = 1100) -> Outcome:
    """1,100 half-sent requests held open (reopened when closed) against the master under
    ``ulimit -n 1024``, while normal requests go on."""
    opened = closed = 0
    stop = asyncio.Event()
    host, port = "127.0.0.1", target.cluster.master_port

    async def hold() -> None:
        nonlocal opened, closed
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            opened += 1
            writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
            try:
                while not stop.is_set():
                    writer.write(b"X-a: b\r\n")
                    await writer.drain()
                    read = asyncio.ensure_future(reader.read(1))
                    done, _ = await asyncio.wait([read], timeout=0.5)
                    if not done:
                        read.cancel()
                        continue
                    if read.result() == b"":
                        closed += 1
                        break
            except (ConnectionError, OSError):
                closed += 1
            finally:
                writer.close()
            await asyncio.sleep(0.1)

    def normal() -> tuple[int, int, float]:
        """Normal requests, one at a time, each on a new connection (from another thread:
        the attacker's own loop is busy)."""
        ok = sent = 0
        slowest = 0.0
        body = {"inputs": "What is AI?", "parameters": {"max_new_tokens": 4}}
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            sent += 1
            started = time.monotonic()
            try:
                reply = httpx.post(f"{target.url}/generate", json=body, timeout=5)
                ok += reply.status_code == 200
            except httpx.HTTPError:
                pass
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        return ok, sent, slowest

    tasks = [asyncio.create_task(hold()) for _ in range(holders)]
    await asyncio.sleep(1.0)  # the holders are in place
    ok, sent, slowest = await asyncio.to_thread(normal)
    stop.set()
    await asyncio.gather(*tasks)
    return Outcome(
        "slowloris: 1,100 half-sent requests, ulimit -n 1024",
        opened,
        closed,
        details={"normal_requests": sent, "normal_ok": ok, "slowest_s": round(slowest, 2)},
    )
