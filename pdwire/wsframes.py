"""A client's websocket frames (RFC 6455 5.2), read one at a time from a server's buffer.

A master reads a node's token frames itself (``pdmaster.nodes.socket``): every one is a
final, masked binary frame, and its head, unmasking and copy were most of that read's cost
in Python. ``read_frame`` says what the frame at a position is, and for a final data frame
gives its payload unmasked; the caller hands anything else to a full websocket parser.
``pdwire._wsframes`` is the same function in C, taken where the install built it; this is
the reference the tests compare it with, and the fallback.
"""

from __future__ import annotations

from collections.abc import Callable

from pdwire.extensions import optional_extension

INCOMPLETE = 0  # not all of the frame is in the buffer yet
BINARY = 1  # a final binary frame, no RSV bits: its payload, unmasked
TEXT = 2  # a final text frame, no RSV bits: its payload, unmasked (not yet UTF-8 checked)
OTHER = 3  # any other frame (control, fragment, RSV bits), whole, masked, within the limit
REFUSED = 4  # unmasked, or longer than the limit: a server must fail the connection

MIN_HEAD = 6  # a masked frame's head: 2 bytes, then 4 of mask

ReadFrame = Callable[[bytes | bytearray, int, int | None], tuple[int, bytes | None, int]]


def read_frame(
    buf: bytes | bytearray, pos: int, limit: int | None
) -> tuple[int, bytes | None, int]:
    """(kind, payload, stop): the frame at ``buf[pos:]`` (``0 <= pos <= len(buf)``), ``stop``
    where the next one starts (``pos`` while INCOMPLETE or REFUSED); the payload only for
    BINARY and TEXT. ``limit``: the longest payload accepted (None: any). A frame is judged
    once its head is in: at least 6 bytes (8, 14 with a 16- or 64-bit length)."""
    end = len(buf)
    if end - pos < MIN_HEAD:
        return INCOMPLETE, None, pos
    head1 = buf[pos + 1]
    length = head1 & 0x7F
    if length == 126:
        if end - pos < 8:
            return INCOMPLETE, None, pos
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        mask_at = pos + 4
    elif length == 127:
        if end - pos < 14:
            return INCOMPLETE, None, pos
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        mask_at = pos + 10
    else:
        mask_at = pos + 2
    if not head1 & 0x80 or (limit is not None and length > limit):
        return REFUSED, None, pos
    start = mask_at + 4
    stop = start + length
    if stop > end:
        return INCOMPLETE, None, pos
    first = buf[pos]
    if first == 0x82:
        kind = BINARY
    elif first == 0x81:
        kind = TEXT
    else:
        return OTHER, None, stop
    return kind, unmask(bytes(buf[start:stop]), bytes(buf[mask_at:start])), stop


def unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR its 4-byte ``mask``, repeated (RFC 6455 5.3)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame_reader(accelerated: bool = True) -> ReadFrame:
    """The compiled ``read_frame`` where the install built it (and ``accelerated``), else
    this module's."""
    module = optional_extension("pdwire._wsframes") if accelerated else None
    if module is None:
        return read_frame
    compiled: ReadFrame = module.read_frame
    return compiled
