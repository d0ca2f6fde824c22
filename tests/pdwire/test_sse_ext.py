"""The compiled event writer: built by the install, taken for the entries nodes send, and
writing exactly the bytes of the Python path (orjson) or leaving the entries to it.

Under AddressSanitizer (not in CI; test_no_leaks's RSS bound does not hold under its
quarantine), from a copy of the tree:
    CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" \
        python setup.py -q build_ext --inplace --force
    PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 \
        LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
        PYTHONPATH=. python -m pytest -q tests/pdwire/test_sse_ext.py -k "not no_leaks"
"""

from __future__ import annotations

import math
import random
import struct
from enum import IntEnum
from pathlib import Path
from typing import Any

import orjson
import pytest

from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import MESSAGE_SETS
from pdwire.pd_io import TokenEntry
from pdwire.sse import (
    COMPILED_CONFIG,
    CompiledEvents,
    compiled_events,
    compiled_http_chunk,
    python_http_chunk,
    python_sse_events,
    sse_events,
)
from pdwire.structs import FinishStatus
from tests.pdwire.leaks import assert_keeps_nothing

FIELDS = ("id", "logprob", "special", "count_output_tokens", "prompt_tokens")


@pytest.fixture(scope="module")
def compiled() -> CompiledEvents:
    events = compiled_events()
    if events is None:
        pytest.fail("pdwire._sse is not built (python setup.py build_ext --inplace)")
    return events


def compiled_or_none(compiled: CompiledEvents, entries: Any) -> bytes | None:
    return compiled(entries, COMPILED_CONFIG)


def same_as_python(compiled: CompiledEvents, entries: Any) -> bytes | None:
    """The compiled writer's answer, checked against the Python path: the same bytes, or None
    (and then ``sse_events`` gives the Python path's bytes or raises its exception)."""
    try:
        expected: bytes | BaseException = python_sse_events(entries)
    except Exception as exc:  # the public path must raise it too
        expected = exc
    got = compiled_or_none(compiled, entries)
    if isinstance(expected, BaseException):
        assert got is None, (entries, expected)
        with pytest.raises(type(expected)):
            sse_events(entries)
        return None
    assert got is None or got == expected, (entries, got, expected)
    assert sse_events(entries) == expected
    return got


def test_the_install_built_it() -> None:
    """CI installs with ``pip install -e .``: the master must not fall back to Python."""
    assert compiled_events() is not None
    assert compiled_http_chunk() is not python_http_chunk


@pytest.mark.parametrize("size", [1, 9, 15, 16, 17, 255, 256, 4095, 4096, 65535, 65536, 1 << 20])
def test_http_chunks_are_framed_as_python_frames_them(size: int) -> None:
    body = random.Random(size).randbytes(size)
    framed = compiled_http_chunk()(body)
    assert framed == python_http_chunk(body)
    assert framed.startswith(b"%x\r\n" % size) and framed.endswith(body + b"\r\n")


@pytest.mark.parametrize("bad", [b"", "text", bytearray(b"x"), memoryview(b"x"), None])
def test_only_non_empty_bytes_make_a_chunk(bad: Any) -> None:
    """An empty chunk would end the body: the caller skips it, and a mistake is an error."""
    with pytest.raises(TypeError):
        compiled_http_chunk()(bad)


@pytest.mark.parametrize("version", sorted(MESSAGE_SETS))
@pytest.mark.parametrize("accelerated", [True, False])
def test_lightllms_own_token_packs(
    compiled: CompiledEvents, golden_root: Path, version: str, accelerated: bool
) -> None:
    """Entries of LightLLM's golden frames (both decoders): written here, the same bytes."""
    codec = LightLLMCodec(version, accelerated=accelerated)
    frames = sorted((golden_root / version).glob("token_packs*.pkl"))
    assert frames
    for path in frames:
        _, entries, _ = codec.decode_node_message(path.read_bytes())
        assert same_as_python(compiled, entries) is not None, path.name
        for entry in entries:
            assert same_as_python(compiled, [entry]) is not None, path.name


ODD_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -0.25,
    0.1,
    1e-4,
    1e-5,
    1.2345e-5,
    1e-6,
    1e-7,
    -1.5e-7,
    2.5e-10,
    1e15,
    1e15 - 1,
    999999999999999.0,
    -999999999999999.0,
    1e16,
    1.5e16,
    2.0**53,
    2.0**53 + 2,
    1e17,
    1e21,
    1e22,
    1e23,
    1e100,
    -1e-100,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    123456789012345.6,
    1234567890123456.8,
    -0.0012345678954315186,
    -2.3841855067985307e-07,
    math.pi,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
]
ODD_INTS = [
    0,
    1,
    -1,
    255,
    256,
    65535,
    2**31 - 1,
    -(2**31),
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    -(10**30),
]
ODD_STRS = [
    "",
    " a",
    "é",
    "日本語",
    "\U0001f600",
    '"\\/',
    "\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x1f\x7f",
    "\u2028\u2029",
    "\ud800",
    "a\udfff",
    "\ud83d\ude00",
    "x" * 300,
    "\x80\xff",
]


class Color(IntEnum):
    RED = 1


class Text(str):
    pass


class Meta(dict[str, Any]):
    def get(self, key: str, default: Any = None) -> Any:
        return "overridden"


class Status:
    def __init__(self, status: Any) -> None:
        self.status = status


class SubStatus(FinishStatus):
    pass


def odd_value(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.25:
        return rng.choice(ODD_FLOATS)
    if pick < 0.35:  # any double at all, from its bits
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    if pick < 0.45:
        return rng.uniform(-30, 0)
    if pick < 0.6:
        return rng.choice(ODD_INTS)
    if pick < 0.7:
        return rng.choice(ODD_STRS)
    return rng.choice(
        [
            None,
            True,
            False,
            [],
            [1, 2.5, "x"],
            {},
            {"a": [1]},
            (1,),
            b"x",
            Color.RED,
            Text("t"),
            1 + 2j,
            object(),
        ]
    )


def odd_text(rng: random.Random) -> Any:
    if rng.random() < 0.95:
        return "".join(rng.choice(ODD_STRS) for _ in range(rng.randint(0, 3)))
    return rng.choice([Text("sub"), 7, None, b"bytes"])


def odd_status(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.9:
        return FinishStatus(rng.choice([0, 0, 1, 2, 3, 4, 99, -1, 2**31 - 1]))
    return rng.choice([SubStatus(1), Status(2), Status(7), Status([]), object()])


def odd_meta(rng: random.Random) -> Any:
    meta: dict[Any, Any] = {}
    for key in FIELDS:
        if rng.random() < 0.85:
            meta[key] = (
                rng.choice([0, 1, 1234, -0.25, True, False])
                if rng.random() < 0.5
                else odd_value(rng)
            )
    meta["cumlogprob"] = odd_value(rng)  # other keys are not written
    meta[7] = [1, 2]
    if rng.random() < 0.03:
        return Meta(meta)
    if rng.random() < 0.02:
        return [("id", 1)]
    return meta


def test_fuzzed_entries_are_written_as_python_writes_them(compiled: CompiledEvents) -> None:
    """Odd metadata (lists, dicts, big ints, nan, inf, -0.0, 1e16, 1e-7, surrogates, control
    chars, non-ASCII, subclasses, missing keys), texts and statuses: the same bytes, or None and
    the Python path's exception."""
    rng = random.Random(17)
    written = declined = 0
    for _ in range(6000):
        entries: Any = [
            (rng.randint(0, 2**40), odd_text(rng), odd_meta(rng), odd_status(rng))
            for _ in range(rng.randint(0, 4))
        ]
        if rng.random() < 0.03:
            entries = tuple(entries)
        elif rng.random() < 0.03 and entries:
            entries[0] = list(entries[0])
        elif rng.random() < 0.03 and entries:
            entries[0] = entries[0][:3]
        if same_as_python(compiled, entries) is None:
            declined += 1
        else:
            written += 1
    assert written > 1000 and declined > 1000  # both sides of the line were tried


def test_plain_entries_are_all_written_here(compiled: CompiledEvents) -> None:
    """What nodes send (every float included: the ones this does not format, orjson does)."""
    rng = random.Random(5)
    for _ in range(3000):
        entries: list[TokenEntry] = []
        for _ in range(rng.randint(1, 8)):
            meta = {
                "id": rng.randint(0, 2**63 - 1),
                "logprob": rng.choice(
                    [
                        rng.uniform(-30, 0),
                        -rng.random() * 10.0 ** -rng.randint(0, 12),
                        struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0],
                        float(rng.randint(-(10**15), 10**15)),
                    ]
                ),
                "special": rng.random() < 0.1,
                "count_output_tokens": rng.randint(1, 4096),
                "prompt_tokens": rng.randint(1, 2**20),
            }
            text = "".join(
                chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF)]))
                for _ in range(rng.randint(0, 6))
            )
            entries.append((rng.randint(0, 2**40), text, meta, FinishStatus(rng.randint(0, 4))))
        assert same_as_python(compiled, entries) is not None


def test_integral_floats_and_their_neighbours(compiled: CompiledEvents) -> None:
    """The floats written here (integral, below 1e15) and the ones next to the line."""
    values = [0.0, -0.0]
    for base in (1.0, 1e14, 1e15, 2.0**52, 2.0**53):
        for sign in (1.0, -1.0):
            x = sign * base
            for _ in range(3):
                values += [x, math.nextafter(x, math.inf), math.nextafter(x, -math.inf)]
                x = math.nextafter(x, math.inf)
    for value in values:
        entry: TokenEntry = (0, "", {"logprob": value}, FinishStatus(0))
        got = compiled_or_none(compiled, [entry])
        assert got is not None
        assert b'"logprob":' + orjson.dumps(value) + b"," in got, value


def test_declined_entries_leave_no_trace(compiled: CompiledEvents) -> None:
    """A decline after entries were written: None, nothing of them kept, no exception set."""
    good: TokenEntry = (0, "a", {"id": 1}, FinishStatus(0))
    bad: TokenEntry = (0, "a", {"id": 2**64}, FinishStatus(0))
    assert compiled_or_none(compiled, [good, good, bad]) is None
    with pytest.raises(TypeError):
        sse_events([good, bad])
    assert compiled_or_none(compiled, [good]) == python_sse_events([good])
    assert compiled_or_none(compiled, []) == b""


def test_a_bad_config_is_a_type_error(compiled: CompiledEvents) -> None:
    with pytest.raises(TypeError):
        compiled([], (FinishStatus, {}, "not bytes", orjson.dumps))
    with pytest.raises(TypeError):
        compiled([], ())


def test_no_leaks(compiled: CompiledEvents) -> None:
    """Every path (written, declined, error) many times over: the inputs' refcounts come back,
    and neither Python's allocator nor the process grows."""
    rng = random.Random(3)
    batches: list[Any] = []
    for _ in range(60):
        entries = [(8, odd_text(rng), odd_meta(rng), odd_status(rng)) for _ in range(3)]
        batches.append(entries)
    meta = {"id": 1, "logprob": -0.123456789, "special": False, "prompt_tokens": 2**63}
    batches.append([(8, "é\n", meta, FinishStatus(1))])
    big = {"id": 10**30, "logprob": 1e300}
    batches.append([(8, "a", big, FinishStatus(2))])

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for entries in batches:
                try:
                    compiled(entries, COMPILED_CONFIG)
                except Exception:  # errors are one of the paths tried
                    pass

    watched = [v for entries in batches for e in entries for v in (e, *e[2:], *_values(e[2]))]
    watched = [v for v in watched if not isinstance(v, bool | int | type(None)) or _big(v)]
    assert_keeps_nothing(run, watched, 50, 2000)


def _values(meta: Any) -> list[Any]:
    return list(meta.values()) if isinstance(meta, dict) else []


def _big(value: Any) -> bool:
    return type(value) is int and abs(value) > 256  # smaller ints are shared


class _Evil:
    """A metadata key hashing like "id" whose comparison empties the entries list."""

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries

    def __hash__(self) -> int:
        return hash("id")

    def __eq__(self, other: object) -> bool:
        self.entries.clear()
        return False


def test_a_key_that_changes_the_list_mid_write(compiled: CompiledEvents) -> None:
    """Not a peer's (keys are str or int), but no crash: the same bytes as Python writes."""

    def entries() -> list[Any]:
        out: list[Any] = []
        meta = {_Evil(out): 1, "id": 5, "text": "t" * 1000}
        out += [(0, "a" * 1000, meta, FinishStatus(0)) for _ in range(3)]
        return out

    assert compiled(entries(), COMPILED_CONFIG) == python_sse_events(entries())
