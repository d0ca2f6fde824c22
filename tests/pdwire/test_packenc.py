"""The compiled TOKEN_PACKS encoder (``pdwire._packenc``): built by the install, taken first by
every codec, and writing exactly what LightLLM's pickle and the general pickler write, or None
for what it does not vouch for (the codec then takes the C pickler's path, then fastpickle's,
then the general pickler's). Its twins are compared on every message: ``NativeNamed`` without
it (the C pickler, renamed) and ``pdwire.mirrorpickle.dumps`` (the pure-Python pickler)."""

from __future__ import annotations

import _ctypes
import ctypes
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from pdwire.extensions import optional_extension
from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import VERSIONS
from pdwire.mirrorpickle import dumps
from pdwire.nativepickle import NativeNamed
from pdwire.pd_io import ObjType
from pdwire.structs import FinishStatus, lightllm_name
from tests.pdwire.leaks import assert_keeps_nothing

NAMES: dict[Any, tuple[str, str]] = {
    ObjType: lightllm_name(ObjType),
    FinishStatus: lightllm_name(FinishStatus),
    _ctypes._unpickle: ("_ctypes", "_unpickle"),  # type: ignore[attr-defined]
}
FRAME = 64 * 1024


def encoder() -> Any:
    module = optional_extension("pdwire._packenc")
    assert module is not None
    return module.Encoder(
        _ctypes._unpickle,  # type: ignore[attr-defined]
        NAMES[_ctypes._unpickle],  # type: ignore[attr-defined]
        FinishStatus,
        NAMES[FinishStatus],
        ObjType,
        NAMES[ObjType],
    )


def one_frame(raw: bytes) -> bool:
    """Whether the general pickler wrote ``raw`` as one frame (the encoder's scope)."""
    body = len(raw) - 11
    return raw[2:3] == b"\x95" and raw[3:11] == body.to_bytes(8, "little") and body < FRAME


def test_the_install_built_it_and_every_codec_takes_it_first() -> None:
    assert optional_extension("pdwire._packenc") is not None
    assert NativeNamed(NAMES).compiled
    assert not NativeNamed(NAMES, compiled=False).compiled
    for version in VERSIONS:
        assert LightLLMCodec(version)._native.compiled


def golden_messages(root: Path, version: str) -> dict[str, tuple[Any, ...]]:
    """Each golden token pack's message built from its decoded form, the objects shared as
    LightLLM shares them: node_mode is one str object, a logprob's decoded_token is the
    token's text object itself."""
    decoded = json.loads((root / version / "decoded.json").read_bytes())
    messages = {}
    for name in ("token_packs_decode.pkl", "token_packs_prefill.pkl", "token_packs_error.pkl"):
        if name not in decoded:
            continue
        ref = decoded[name]
        shared: dict[str, str] = {}
        entries = []
        for sub_id, text, meta, status in ref[1]:
            meta = {k: shared.setdefault(v, v) if k == "node_mode" else v for k, v in meta.items()}
            if "logprobs" in meta:
                meta["logprobs"] = {
                    int(k): {**v, "decoded_token": text} for k, v in meta["logprobs"].items()
                }
            entries.append((sub_id, text, meta, FinishStatus(status["status"])))
        messages[name] = (ObjType.TOKEN_PACKS, entries, *ref[2:])
    return messages


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_token_packs_come_out_as_lightllm_wrote_them(
    golden_root: Path, version: str
) -> None:
    enc = encoder()
    messages = golden_messages(golden_root, version)
    assert "token_packs_decode.pkl" in messages and "token_packs_prefill.pkl" in messages
    for name, message in messages.items():
        golden = (golden_root / version / name).read_bytes()
        assert enc.dumps(message) == golden, name
        assert NativeNamed(NAMES, compiled=False).token_packs(message) == golden, name
        load = message[2] if len(message) > 2 else None
        assert LightLLMCodec(version).encode_token_packs(message[1], load) == golden, name


TEXTS = ["", " is", "é", "✓ unicode", "😀 four bytes", "中文", "x" * 255, "y" * 256, "z" * 3000]
INTS = [
    *(0, 1, 127, 128, 255, 256, 65535, 65536, -1, -127, -128, -129, -255, -256, -257),
    *(-32768, -32769, -65535, -65536, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1),
    *(2**32, 2**40 + 3, -(2**40) - 3, 2**55, 2**56 - 1, 2**56, -(2**55), -(2**55) - 1),
    *(2**63 - 1, 2**63, -(2**63), 2**64 - 1, 0x80, 0x8000, 0x800000, 0x80000000, -0x80000000),
]
FLOATS = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, 5e-324, -2.5, 1 / 3]
KEYS = [
    *("id", "logprob", "cumlogprob", "special", "count_output_tokens", "prompt_cache_len"),
    *("mtp_accepted_token_num", "prompt_tokens", "node_mode", "input_usage", "logprobs"),
    *("prompt_ids", "finish", "a", "é-key", "k" * 300, "raw", "tuple", "nothing", "more"),
]


def fresh(text: str) -> str:
    """An equal str that is another object (no memo reference for it)."""
    return "".join(list(text)) if len(text) > 1 else text


def random_value(rng: random.Random, texts: list[str], depth: int = 0) -> Any:
    pick = rng.random()
    if pick < 0.25:
        return rng.choice(INTS) if rng.random() < 0.5 else rng.randrange(-(2**63), 2**64)
    if pick < 0.4:
        return rng.choice(FLOATS) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
    if pick < 0.5:
        return rng.choice([True, False, None])
    if pick < 0.65:
        return rng.choice(texts)  # a shared object: a memo reference after its first time
    if pick < 0.7:
        return rng.choice([b"", b"\x00", b"raw bytes", bytes(300)])
    if depth >= 2 or pick < 0.8:
        return fresh(rng.choice(TEXTS))
    if pick < 0.85:
        return [random_value(rng, texts, depth + 1) for _ in range(rng.choice([0, 1, 2, 7]))]
    if pick < 0.9:
        return tuple(random_value(rng, texts, depth + 1) for _ in range(rng.randint(0, 5)))
    return {
        rng.choice([rng.randrange(1 << 17), rng.choice(KEYS)]): random_value(rng, texts, depth + 1)
        for _ in range(rng.randint(0, 4))
    }


def random_message(rng: random.Random) -> tuple[Any, ...]:
    texts = [fresh(rng.choice(TEXTS)) for _ in range(4)]  # the node's pieces, shared
    entries = []
    statuses = [FinishStatus(s) for s in range(5)]
    for _ in range(rng.choice([0, 1, 2, 8, 8, 64, 300])):
        meta = {rng.choice(KEYS): random_value(rng, texts) for _ in range(rng.randint(0, 20))}
        status = rng.choice(statuses) if rng.random() < 0.1 else FinishStatus(rng.randint(0, 4))
        entries.append((rng.choice(INTS), rng.choice(texts), meta, status))
    if rng.random() < 0.3:
        return (ObjType.TOKEN_PACKS, entries)
    load = rng.choice(
        [{}, {"total_token_usage_rate": rng.random(), "client_ip_port": "10.0.0.174:8019"}]
    )
    return (ObjType.TOKEN_PACKS, entries, load)


def test_random_token_packs_come_out_as_the_general_and_c_picklers_write_them() -> None:
    enc = encoder()
    c_pickler = NativeNamed(NAMES, compiled=False)
    rng = random.Random(20261202)
    taken = too_big = 0
    for _ in range(500):  # ~4 s: the pure-Python pickler is the slow part
        message = random_message(rng)
        raw = enc.dumps(message)
        expected = dumps(message)
        if not one_frame(expected):
            assert raw is None
            too_big += 1
            continue
        assert raw == expected
        native = c_pickler.token_packs(message)
        assert native is None or native == expected
        taken += 1
    assert taken > 350 and too_big > 20


def test_shared_and_odd_objects_get_the_memo_references_pickle_gives_them() -> None:
    """Objects pickle meets again (by identity): the same struct, its __dict__, its class,
    an enum member, the one empty bytes, a dict; and tuples of every size."""
    enc = encoder()
    status = FinishStatus(1)
    shared_meta = {"id": 7, "logprob": -0.5}
    tuples = ((), (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ("a", "a", [], {}, ()))
    entries = [
        (1, "a", shared_meta, status),
        (2, "a", {"dict": status.__dict__, "cls": FinishStatus, "kind": ObjType.REQ}, status),
        (3, "b", {"b": b"", "b2": b"", "t": tuples}, status),
        (4, "b", shared_meta, FinishStatus(0)),
    ]
    for message in ((ObjType.TOKEN_PACKS, entries), (ObjType.TOKEN_PACKS, entries, {})):
        assert enc.dumps(message) == dumps(message)
        assert NativeNamed(NAMES, compiled=False).token_packs(message) == dumps(message)


def test_a_list_holding_itself_is_a_memo_reference() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    message = (ObjType.TOKEN_PACKS, [(1, "a", {"loop": looped}, FinishStatus(0))])
    assert encoder().dumps(message) == dumps(message)


def test_memo_references_past_255_are_long() -> None:
    enc = encoder()
    texts = [f"text {i}" for i in range(400)]
    entries = [(i, texts[i % 400], {"n": texts[-1 - i % 400]}, FinishStatus(0)) for i in range(800)]
    message = (ObjType.TOKEN_PACKS, entries, {})
    raw = enc.dumps(message)
    assert raw == dumps(message) and b"j" in raw  # LONG_BINGET


class Unnamed:
    """A class no LightLLM message holds."""


class Text(str):
    pass


def recursive_tuple() -> tuple[Any, ...]:
    inner: list[Any] = []
    outer = (inner,)
    inner.append(outer)
    return outer


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def with_attribute() -> FinishStatus:
    status = FinishStatus(1)
    status.note = "an instance attribute"  # type: ignore[attr-defined]
    return status


def test_what_it_does_not_vouch_for_is_left_to_the_next_pickler() -> None:
    """Each case: the encoder returns None, and the codec still writes the general pickler's
    bytes (by the C pickler's path, fastpickle's or the general one)."""
    enc = encoder()
    status = FinishStatus(0)

    def packs(*entries: tuple[Any, ...], load: Any = None) -> tuple[Any, ...]:
        return (ObjType.TOKEN_PACKS, list(entries), {} if load is None else load)

    cases = {
        "an object of a class not named": packs((1, "a", {"x": Unnamed()}, status)),
        "a str subclass": packs((1, Text("a"), {}, status)),
        "a class not seen before": packs((1, "a", {"cls": FinishStatus}, status)),
        "an int past 64 bits": packs((1, "a", {"x": 2**64}, status)),
        "a negative int past 64 bits": packs((1, "a", {"x": -(2**63) - 1}, status)),
        "a lone surrogate": packs((1, "\ud800", {}, status)),
        "a struct with an instance attribute": packs((1, "a", {}, with_attribute())),
        "over 1,000 entries": packs(*[(i, "a", {}, status) for i in range(1001)]),
        "a 1,001-item list": packs((1, "a", {"ids": list(range(1001))}, status)),
        "a 1,000-item dict": packs((1, "a", {str(i): i for i in range(1000)}, status)),
        "a 1,000-item load": packs(load={str(i): i for i in range(1000)}),
        "nesting past 32": packs((1, "a", {"deep": nested(40)}, status)),
        "past one frame": packs(*[(i, f"{i}" + "x" * 100, {}, status) for i in range(700)]),
        "one str past one frame": packs((1, "x" * FRAME, {}, status)),
    }
    for why, message in cases.items():
        assert enc.dumps(message) is None, why
        assert LightLLMCodec().encode_token_packs(message[1], message[2]) == dumps(message), why
    cyclic = packs((1, "a", {"t": recursive_tuple()}, status))
    assert enc.dumps(cyclic) is None  # the C pickler's path takes it, as pickle writes it
    assert LightLLMCodec().encode_token_packs(cyclic[1], cyclic[2]) == dumps(cyclic)
    deep = packs((1, "a", {"deep": nested(200)}, status))  # past NativeNamed's depth too
    assert LightLLMCodec().encode_token_packs(deep[1], deep[2]) == dumps(deep)
    limits = {  # the same shapes just inside: taken
        "1,000 entries": packs(*[(i, "a", {}, status) for i in range(1000)]),
        "a 1,000-item list": packs((1, "a", {"ids": list(range(1000))}, status)),
        "a 999-item dict": packs((1, "a", {str(i): i for i in range(999)}, status)),
        "nesting of 32": packs((1, "a", {"deep": nested(27)}, status)),  # 4 above it
    }
    for why, message in limits.items():
        assert enc.dumps(message) == dumps(message), why


def test_a_status_of_an_unusual_size_is_left_to_the_next_pickler() -> None:
    """bytes of 0 or 1 byte are objects pickle shares (memo references): not vouched for."""

    class Tiny(ctypes.Structure):
        _fields_ = [("flag", ctypes.c_uint8)]

    module = optional_extension("pdwire._packenc")
    assert module is not None
    unpickle = _ctypes._unpickle  # type: ignore[attr-defined]
    enc = module.Encoder(unpickle, NAMES[unpickle], Tiny, ("m", "Tiny"), ObjType, NAMES[ObjType])
    assert enc.dumps((ObjType.TOKEN_PACKS, [(1, "a", {}, Tiny(1))])) is None


def test_no_leaks() -> None:
    enc = encoder()
    rng = random.Random(5)
    messages = [random_message(rng) for _ in range(20)]
    messages.append((ObjType.TOKEN_PACKS, [(1, "\ud800", {"x": [1, 2]}, FinishStatus(0))]))
    messages.append((ObjType.TOKEN_PACKS, [(1, "a", {"t": recursive_tuple()}, FinishStatus(0))]))

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for message in messages:
                enc.dumps(message)

    watched = [m[1][0][1] for m in messages if m[1]] + [m[1][0][2] for m in messages if m[1]]
    assert_keeps_nothing(run, watched, 20, 300)
