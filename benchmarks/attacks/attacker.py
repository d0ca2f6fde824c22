"""The attacker's side of a node socket: it connects from 127.0.0.2 (not any node's address), as a
host on the cluster network would, and reads how the server closed the socket."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ATTACKER = "127.0.0.2"
REFUSED_CODES = (1008, 1009)


def attacker_socket(url: str) -> Any:
    return connect(url, local_addr=(ATTACKER, 0), max_size=None, open_timeout=5)


async def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    """The code the server closed ``ws`` with (None: still open after ``timeout``)."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except TimeoutError:
        return None
    except ConnectionClosed:
        pass
    return ws.close_code


def registration(node_id: int, mode: str, port: int = 1) -> dict[str, Any]:
    args: dict[str, Any] = {"host": ATTACKER, "pd_node_id": node_id}
    if mode == "decode":
        args["pd_decode_rpyc_port"] = 1234
    return {
        "node_id": node_id,
        "client_ip_port": f"{ATTACKER}:{port}",
        "mode": mode,
        "start_args": args,
    }


async def frame_refused(url: str, text: str) -> bool:
    """Send one text frame; True if the server closes the socket with 1008/1009."""
    async with attacker_socket(url) as ws:
        await ws.send(text)
        return await close_code(ws) in REFUSED_CODES
