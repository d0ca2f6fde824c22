"""Hostile frames on the node sockets: pickles that would run code or cost 2**40 hashes, a memo
bomb, a 17 MiB frame, and JSON bombs (deep, huge-int, NaN, 300 KB)."""

from __future__ import annotations

import json
import os
import time

import httpx
from websockets.exceptions import ConnectionClosed

from benchmarks.attacks.attacker import (
    REFUSED_CODES,
    attacker_socket,
    close_code,
    frame_refused,
    registration,
)
from benchmarks.attacks.target import Outcome, Target
from pdlocal.cluster import rss_bytes


def _str(value: str) -> bytes:
    raw = value.encode()
    return b"\x8c" + bytes((len(raw),)) + raw


def _global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x04\x95" + (len(body) + 1).to_bytes(8, "little") + body + b"."


def _setattrs(**attrs: bytes) -> bytes:
    """BUILD with ``(None, {name: value})``: setattr on the object under it."""
    return b"N}(" + b"".join(_str(k) + v for k, v in attrs.items()) + b"u\x86b"


PD_IO = "lightllm.server.pd_io_struct"
OS_SYSTEM = _str("os") + _str("system") + b"\x86"
PICKLE_BOMBS = {
    # accepted, these would make the master's frames run a command on every LightLLM node
    "ObjType pickled as os.system": _global(PD_IO, "ObjType")
    + _setattrs(__lightllm_name__=OS_SYSTEM),
    "ABORT's value a command": _global(PD_IO, "ObjType")
    + b"K\x01\x85R"
    + _setattrs(_value_=_str("touch /tmp/pdctl-pwned")),
    "ObjType's value map emptied": _global(PD_IO, "ObjType") + _setattrs(_value2member_map_=b"}"),
    "PD_Master_Obj pickled as os.system": _global(PD_IO, "PD_Master_Obj")
    + _setattrs(__lightllm_name__=OS_SYSTEM),
    # a dict keyed by a tuple 40 deep, two references per level: 2**40 hashes
    "hash bomb": b"})\x94"
    + b"".join(b"h" + bytes((i,)) + b"h" + bytes((i,)) + b"\x86\x94" for i in range(40))
    + b"Ns",
}


async def pickled_frame_bombs(target: Target) -> Outcome:
    """Binary frames after a registration: BUILD on wire classes, a hash bomb, a memo bomb
    (LONG_BINPUT at 2**27), a 17 MiB frame; /health must answer within 1 s throughout."""
    frames = [_pickle(body) for body in PICKLE_BOMBS.values()]
    frames += [b"\x80\x04Nr\x00\x00\x00\x08.", b"\x80" * (17 * 1024 * 1024)]
    rss_before = rss_bytes(target.master_pid)
    refused, slowest = [], 0.0
    async with httpx.AsyncClient(timeout=5) as client:
        for port, frame in enumerate(frames, start=9000):
            async with attacker_socket(f"{target.ws}/pd_register") as ws:
                await ws.send(json.dumps(registration(port, "prefill", port)))
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    pass
                start = time.monotonic()
                await client.get(f"{target.url}/health")
                slowest = max(slowest, time.monotonic() - start)
                refused.append(await close_code(ws) in REFUSED_CODES)
    return Outcome(
        "/pd_register: pickled BUILD, hash, memo bombs; 17 MiB frame",
        len(refused),
        sum(refused) if slowest < 1.0 and not os.path.exists("/tmp/pdctl-pwned") else 0,
        details={
            "slowest_health_s": round(slowest, 3),
            "rss_growth_mb": round((rss_bytes(target.master_pid) - rss_before) / 2**20, 1),
        },
    )


HUGE_INT = "9" * 5000
JSON_BOMBS = {
    "nested 5000 deep": "[" * 5000 + "]" * 5000,
    "5000-digit integer": '{"node_id": ' + HUGE_INT + "}",
    "NaN": '{"node_id": NaN}',
    "1e999": '{"node_id": 1e999}',
    "300 KB": json.dumps({"node_id": 1, "pad": "x" * 300_000}),
}


async def registration_json_bombs(target: Target) -> Outcome:
    refused = [await frame_refused(f"{target.ws}/pd_register", t) for t in JSON_BOMBS.values()]
    return Outcome("/pd_register: deep, huge-int, NaN, 300 KB JSON", len(refused), sum(refused))


async def kv_status_json_bombs(target: Target) -> Outcome:
    bombs = {
        **JSON_BOMBS,
        "5000-digit group id": '{"type": "kv_move_status", "group_request_id": '
        + HUGE_INT
        + ', "dp_index": 0, "pd_master_node_id": 0}',
    }
    refused = [await frame_refused(f"{target.ws}/kv_move_status", t) for t in bombs.values()]
    return Outcome("/kv_move_status: deep, huge-int, NaN, 300 KB JSON", len(refused), sum(refused))
