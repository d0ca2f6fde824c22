"""A websocket client's binary frames written straight to its transport, as websockets would.

``websockets``' ``send`` costs a node a few microseconds per frame in Python (a context
manager, a ``Frame`` object, its serialization through a BytesIO, a ``getrandom`` call for
the masking key), and a decode node sends a frame per master per step. ``DirectFrames``
writes the same frame (FIN, binary, the client's mask bit, the shortest length form, a
random key, the masked payload) in one call, but only while nothing else is in its way:
the connection open, nothing of the library's waiting to be written, no fragmented message
under way, no extension that would rewrite the frame, no debug log of each frame, the
transport not paused or closing. Otherwise it writes nothing and the caller takes
``websockets``' ``send``, which knows what to do (wait, raise ``ConnectionClosed``).
"""

from __future__ import annotations

import os
import struct

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # an install without websockets' C extension
    from websockets.utils import apply_mask

_FIN_BINARY = 0x82
_MASKED = 0x80
_HEAD = struct.Struct("!BB").pack
_HEAD16 = struct.Struct("!BBH").pack
_HEAD64 = struct.Struct("!BBQ").pack
_OPEN = State.OPEN
KEY_POOL_BYTES = 4096


def masked_binary_frame(data: bytes, key: bytes) -> bytes:
    """A final binary frame of ``data`` from a client, masked with the 4-byte ``key``."""
    n = len(data)
    if n < 126:
        head = _HEAD(_FIN_BINARY, _MASKED | n)
    elif n < 65536:
        head = _HEAD16(_FIN_BINARY, _MASKED | 126, n)
    else:
        head = _HEAD64(_FIN_BINARY, _MASKED | 127, n)
    return head + key + apply_mask(data, key)


class DirectFrames:
    """Masking keys from ``os.urandom``, a pool of them at a time (RFC 6455 asks for keys
    from a strong source of entropy, unpredictable, not for a system call per frame)."""

    def __init__(self) -> None:
        self._keys = b""
        self._next = 0

    def _key(self) -> bytes:
        at = self._next
        if at + 4 > len(self._keys):
            self._keys = os.urandom(KEY_POOL_BYTES)
            at = 0
        self._next = at + 4
        return self._keys[at : at + 4]

    def write(self, ws: ClientConnection, data: bytes) -> bool:
        """``data`` as one binary frame on ``ws``, now, if nothing stands in the way (see the
        module); False, and nothing written, otherwise."""
        protocol = ws.protocol
        transport = ws.transport
        if (
            protocol.state is not _OPEN
            or protocol.writes
            or protocol.expect_continuation_frame
            or protocol.extensions
            or protocol.debug
            or ws.paused
            or transport.is_closing()
        ):
            return False
        transport.write(masked_binary_frame(data, self._key()))
        return True
