"""The KV cache hand-off between a prefill node and a decode node (the simulated rpyc port).

Length-prefixed JSON frames over one TCP connection per hand-off:
P -> D  {"op": "offer", group_request_id, prompt_ids, first_token_id, max_new_tokens, ...}
D -> P  {"ready": true} once D has room (or {"refused": reason})
P sleeps for the transfer time of the cache (size / bandwidth), then
P -> D  {"op": "done"}
D -> P  {"ok": true} after D has told the master (kv_move_status)

Frames carry the master's 128-bit node id, so they use the json module (orjson refuses
integers past 64 bits).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


async def write_frame(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    writer.write(_LEN.pack(len(data)) + data)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if size > MAX_FRAME:
        raise ValueError(f"KV hand-off frame of {size} bytes is over the limit")
    obj = json.loads(await reader.readexactly(size))
    if not isinstance(obj, dict):
        raise ValueError("KV hand-off frame must be a JSON object")
    return obj
