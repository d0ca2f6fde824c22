"""A node's websocket frames read from the master's buffer: the compiled reader built by the
install and giving exactly what the Python one gives, on every frame form, cut and mutation."""

from __future__ import annotations

import contextlib
import os
import random
import struct

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from pdwire.wsframes import (
    BINARY,
    INCOMPLETE,
    OTHER,
    REFUSED,
    TEXT,
    frame_reader,
    read_frame,
    unmask,
)
from tests.pdwire.leaks import memory_growth

COMPILED = frame_reader()


def frame(
    first: int, payload: bytes, mask: bytes | None = b"\x01\x02\x03\x04", form: int = 0
) -> bytes:
    """A frame with its first byte, the payload masked with ``mask`` (None: unmasked), and its
    length in the shortest form, or ``form`` (126, 127) where it fits."""
    n = len(payload)
    bit = 0x80 if mask is not None else 0
    if form == 127 or n >= 1 << 16:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    elif form == 126 or n >= 126:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | n])
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_the_install_built_it() -> None:
    assert COMPILED is not read_frame
    assert frame_reader(accelerated=False) is read_frame


def test_each_kind_of_frame() -> None:
    data = os.urandom(300)
    cases = [
        (frame(0x82, data), (BINARY, data)),
        (frame(0x81, "é".encode()), (TEXT, "é".encode())),
        (frame(0x82, b""), (BINARY, b"")),
        (frame(0x82, data, form=127), (BINARY, data)),
        (frame(0x82, b"ab", form=126), (BINARY, b"ab")),
        (frame(0x02, data), (OTHER, None)),  # a first fragment
        (frame(0x80, data), (OTHER, None)),  # a continuation
        (frame(0x89, b"ping"), (OTHER, None)),
        (frame(0x88, b"\x03\xe8"), (OTHER, None)),
        (frame(0xC2, data), (OTHER, None)),  # RSV1: no extension was negotiated
    ]
    for raw, (kind, payload) in cases:
        for read in (read_frame, COMPILED):
            assert read(raw, 0, 1000) == (kind, payload, len(raw))
            assert read(b"xy" + raw, 2, None) == (kind, payload, len(raw) + 2)
            assert read(bytearray(raw), 0, 1000) == (kind, payload, len(raw))
    for read in (read_frame, COMPILED):
        assert read(frame(0x82, data, mask=None), 0, 1000) == (REFUSED, None, 0)
        assert read(frame(0x82, data), 0, 299) == (REFUSED, None, 0)
        assert read(frame(0x82, data)[:20], 0, 299) == (REFUSED, None, 0)  # before it is whole
        assert read(frame(0x82, b"12345678"), 0, 0) == (REFUSED, None, 0)
        assert read(b"", 0, None) == (INCOMPLETE, None, 0)


def test_payloads_are_what_the_websockets_parser_reads() -> None:
    rng = random.Random(7)
    for n in [*range(0, 40), 125, 126, 127, 65535, 65536, 100_000]:
        payload = rng.randbytes(n)
        mask = rng.randbytes(4)
        raw = frame(0x82, payload, mask)
        reader = StreamReader()
        reader.feed_data(raw)
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            parsed = done.value
        assert parsed.opcode is Opcode.BINARY and parsed.data == payload
        assert COMPILED(raw, 0, None) == read_frame(raw, 0, None) == (BINARY, payload, len(raw))
        assert unmask(raw[-n:] if n else b"", mask) == payload


def test_every_cut_and_mutation_reads_the_same_in_c_and_python() -> None:
    rng = random.Random(11)
    seeds = [
        frame(
            rng.choice([0x82, 0x81, 0x02, 0x80, 0x89, 0x8A, 0x88, 0xC2, 0x01]),
            rng.randbytes(n),
            rng.randbytes(4),
            form,
        )
        for n, form in [(0, 0), (5, 0), (125, 0), (126, 0), (200, 127), (3000, 0), (70_000, 0)]
        for _ in range(3)
    ]
    seeds.append(frame(0x82, b"unmasked", None))
    for raw in seeds:
        stream = raw + frame(0x82, b"next")
        for cut in (
            range(len(stream) + 1) if len(stream) < 400 else rng.sample(range(len(stream)), 300)
        ):
            for limit in (None, 128, 1 << 20):
                got = COMPILED(stream[:cut], 0, limit)
                assert got == read_frame(stream[:cut], 0, limit), (raw[:16], cut, limit)
    for _ in range(5000):
        data = bytearray(rng.choice(seeds)[:200])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        pos = rng.randrange(len(data) + 1)
        limit = rng.choice([None, 0, 1, 100, 1 << 62])
        assert COMPILED(bytes(data), pos, limit) == read_frame(bytes(data), pos, limit)


def test_a_64_bit_length_past_any_buffer_is_never_whole() -> None:
    raw = bytes([0x82, 0xFF]) + b"\xff" * 8 + b"mask" + b"x" * 10
    for read in (read_frame, COMPILED):
        assert read(raw, 0, None) == (INCOMPLETE, None, 0)
        assert read(raw, 0, 1 << 20) == (REFUSED, None, 0)


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        COMPILED("text", 0, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        COMPILED(b"", 0)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        COMPILED(b"abc", 4, None)


def test_no_leaks() -> None:
    raw = frame(0x82, os.urandom(900)) + frame(0x89, b"ping") + frame(0x82, b"x", None)
    cases = [(raw, 0, None), (raw, 0, 10), (raw[:500], 0, None), (bytearray(raw), 918, None)]

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for buf, pos, limit in cases:
                COMPILED(buf, pos, limit)
            with contextlib.suppress(TypeError):
                COMPILED("x", 0, None)  # type: ignore[arg-type]

    run(100)
    grown, _ = memory_growth(run, 100, 20_000)
    assert grown < 16 * 1024, grown
