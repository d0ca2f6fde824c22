"""Frames an attacker would send: each is refused, fast, and leaves every class as it was."""

from __future__ import annotations

import pickletools
import random
import struct
import time
import tracemalloc

import pytest

from pdwire.errors import ForbiddenGlobalError, FrameLimitError, MalformedMessageError, WireError
from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import MESSAGE_SETS
from pdwire.mirrorpickle import dumps
from pdwire.pd_io import ObjType, PD_Master_Obj
from pdwire.structs import FinishStatus

PD_IO = "lightllm.server.pd_io_struct"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes((len(raw),)) + raw


def g(module: str, name: str) -> bytes:
    return s(module) + s(name) + b"\x93"


def frame(body: bytes) -> bytes:
    return b"\x80\x04\x95" + struct.pack("<Q", len(body) + 1) + body + b"."


def slotstate(**attrs: bytes) -> bytes:
    """BUILD's ``(None, {name: value})``: setattr on whatever is under it."""
    items = b"".join(s(k) + v for k, v in attrs.items())
    return b"N}(" + items + b"u\x86b"


@pytest.fixture(params=sorted(MESSAGE_SETS))
def codec(request: pytest.FixtureRequest) -> LightLLMCodec:
    return LightLLMCodec(request.param)


RCE_FRAMES = {
    # the frames: BUILD on an allowlisted class, an enum member, the value map
    "ObjType name": g(PD_IO, "ObjType")
    + slotstate(__lightllm_name__=s("os") + s("system") + b"\x86"),
    "PD_Master_Obj name": g(PD_IO, "PD_Master_Obj")
    + slotstate(__lightllm_name__=s("os") + s("system") + b"\x86"),
    "ObjType value map": g(PD_IO, "ObjType") + slotstate(_value2member_map_=b"}"),
    "ABORT member value": g(PD_IO, "ObjType")
    + b"K\x01\x85R"
    + slotstate(_value_=s("$(touch /tmp/pdctl-pwned)")),
    "FinishStatus class": g("lightllm.server.core.objs.req", "FinishStatus")
    + slotstate(finish_reason=b"N"),
    "object after BUILD": g(PD_IO, "PD_Master_Obj")
    + b")\x81}("
    + s("node_id")
    + b"K\x01"
    + s("host_ip_port")
    + s("a:1")
    + b"ub"
    + slotstate(__class__=b"N"),
}


@pytest.mark.parametrize("name", sorted(RCE_FRAMES))
def test_build_on_classes_members_and_built_objects_is_refused(
    codec: LightLLMCodec, name: str
) -> None:
    before = (
        dict(ObjType._value2member_map_),
        ObjType.ABORT.value,
        ObjType.__lightllm_name__,  # type: ignore[attr-defined]
        PD_Master_Obj.__lightllm_name__,
        dict(vars(FinishStatus)),
    )
    with pytest.raises(WireError):
        codec.loads(frame(RCE_FRAMES[name]))
    with pytest.raises(WireError):
        codec.decode_node_message(frame(RCE_FRAMES[name]))
    after = (
        dict(ObjType._value2member_map_),
        ObjType.ABORT.value,
        ObjType.__lightllm_name__,  # type: ignore[attr-defined]
        PD_Master_Obj.__lightllm_name__,
        dict(vars(FinishStatus)),
    )
    assert after == before
    assert codec.encode_abort(8) == dumps((ObjType.ABORT, 8))


def test_classes_are_never_values(codec: LightLLMCodec) -> None:
    for body in (
        g(PD_IO, "ObjType") + b"\x85",  # (ObjType,)
        g("lightllm.server.core.objs.req", "FinishStatus") + b"\x85",
        g("_ctypes", "_unpickle") + b"\x85",
        g(PD_IO, "ObjType") + b"\x94" + b"K\x03\x85R" + b"h\x00\x86",  # (TOKEN_PACKS, ObjType)
    ):
        with pytest.raises(WireError):
            codec.loads(frame(body))


def hash_bomb(depth: int) -> bytes:
    """A dict keyed by a tuple nested ``depth`` deep, each level two references to the last:
    hashing it visits 2**depth leaves (74 bytes at depth 33)."""
    body = b")\x94"
    for i in range(depth):
        body += b"h" + bytes((i,)) + b"h" + bytes((i,)) + b"\x86\x94"
    return frame(b"}" + body + b"Ns")


def test_hash_bomb_is_refused_at_once(codec: LightLLMCodec) -> None:
    bomb = hash_bomb(33)
    start = time.process_time()
    with pytest.raises(MalformedMessageError, match="memo reference to a container"):
        codec.loads(bomb)
    with pytest.raises(WireError):
        codec.decode_node_message(bomb)
    assert time.process_time() - start < 0.1


def test_memo_bomb_allocates_nothing(codec: LightLLMCodec) -> None:
    bombs = [
        b"\x80\x04Nr\x00\x00\x00\x08.",  # LONG_BINPUT at 2**27: 2 GB in the C unpickler
        b"\x80\x04Nq\xff.",  # BINPUT
        b"\x80\x04N" + b"\x94" * 1000 + b"j\xff\xff\xff\x7f.",  # LONG_BINGET far away
    ]
    tracemalloc.start()
    try:
        for bomb in bombs:
            with pytest.raises(WireError):
                codec.loads(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"K\x01" + b"\x85" * 100_000, FrameLimitError),  # 100k nested 1-tuples
        (b"]" * 40 + b"a" * 39, FrameLimitError),  # 40 nested lists
        (b"\x8a\xff" + b"\x01" * 255, FrameLimitError),  # a 2040-bit integer
        (b"\x8b\x00\x00\x00\x01" + b"\x01" * 16, MalformedMessageError),  # LONG4
        (
            b"}" + b"(" + b"".join(b"J" + struct.pack("<i", i) + b"N" for i in range(2000)) + b"u",
            FrameLimitError,
        ),  # a dict of 2000 items
        (b"}" + b"(" + b"K\x01K\x01\x86N" + b"u", MalformedMessageError),  # a tuple key
        (b"}\x94h\x00\x85", MalformedMessageError),  # a memo reference to a dict
        (b"N2", MalformedMessageError),  # DUP
        (g("os", "system") + s("id") + b"\x85R", ForbiddenGlobalError),
        (g("builtins", "eval"), ForbiddenGlobalError),
        (b"cos\nsystem\n", MalformedMessageError),  # GLOBAL (protocol 0)
        (b"\x82\x01", MalformedMessageError),  # EXT1
        (b"(K\x01K\x02", MalformedMessageError),  # ends with an open MARK
        (b"K\x01K\x02", MalformedMessageError),  # two values at STOP
        (b"\x8c\xff\x00", MalformedMessageError),  # a string past the end
    ],
)
def test_shapes_outside_the_messages_are_refused(
    codec: LightLLMCodec, body: bytes, error: type[Exception]
) -> None:
    start = time.process_time()
    with pytest.raises(error):
        codec.loads(frame(body))
    assert time.process_time() - start < 0.5


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"]" + b"(" + b"G\x00\x00\x00\x00\x00\x00\x00\x00" * 1200 + b"e", "values"),
        (b"N" * 1200, "values"),  # pushes allocate nothing but the stack's slots
        (b"(" * 1200, "values"),  # marks
        (b"}" * 200, "values"),  # empty dicts weigh 8
        (b"N" + b"\x94" * 200, "memo"),
    ],
)
def test_value_and_memo_caps_are_checked_before_they_are_paid(body: bytes, what: str) -> None:
    from pdwire.safepickle import Limits

    codec = LightLLMCodec(limits=Limits(max_objects=1000, max_memo=100))
    with pytest.raises(FrameLimitError, match=what):
        codec.loads(frame(body))


def test_plain_objects_take_exactly_their_fields(codec: LightLLMCodec) -> None:
    def master_obj(items: bytes) -> bytes:
        return frame(g(PD_IO, "PD_Master_Obj") + b")\x81}(" + items + b"ub")

    ok = codec.decode_pd_master_obj(
        master_obj(s("node_id") + b"K\x07" + s("host_ip_port") + s("a:1"))
    )
    assert ok == PD_Master_Obj(7, "a:1")
    for items in (
        s("node_id") + b"K\x07",  # missing field
        s("node_id") + b"K\x07" + s("host_ip_port") + s("a:1") + s("__reduce__") + b"N",
        s("node_id") + s("7") + s("host_ip_port") + s("a:1"),  # wrong type
    ):
        with pytest.raises(MalformedMessageError):
            codec.decode_pd_master_obj(master_obj(items))


def token_packs(codec: LightLLMCodec, entries: list, load: dict | None = None) -> bytes:
    return codec.encode_token_packs(entries, load)


def test_fast_path_and_safepickle_agree_on_random_token_packs() -> None:
    rng = random.Random(13)
    for version in MESSAGE_SETS:
        codec = LightLLMCodec(version)
        statuses = sorted(MESSAGE_SETS[version].finish_statuses)
        for _ in range(100):
            entries = []
            for _ in range(rng.randint(0, 40)):
                meta: dict = {
                    "id": rng.randint(-(2**40), 2**40),
                    "logprob": rng.uniform(-5, 0),
                    "special": rng.random() < 0.5,
                    "text": "é" * rng.randint(0, 300),
                    "n": None,
                }
                if rng.random() < 0.5:
                    meta["logprobs"] = {rng.randint(0, 70000): {"logprob": -1.0, "rank": 1}}
                    meta["prompt_ids"] = [
                        rng.randint(0, 2**31 - 1) for _ in range(rng.randint(0, 50))
                    ]
                text = rng.choice(["", " a", "é" * rng.randint(0, 300)])
                entries.append(
                    (8 * rng.randint(0, 10**6), text, meta, FinishStatus(rng.choice(statuses)))
                )
            raw = token_packs(
                codec, entries, {"total_token_usage_rate": 0.5, "client_ip_port": "h:1"}
            )
            kind, got, load = codec.decode_node_message(raw)
            reference = codec.loads(raw)
            assert kind is ObjType.TOKEN_PACKS
            assert [(e[0], e[1], e[2], e[3].status) for e in got] == [
                (e[0], e[1], e[2], e[3].status) for e in reference[1]
            ]
            assert [(e[0], e[1], e[2], e[3].status) for e in got] == [
                (e[0], e[1], e[2], e[3].status) for e in entries
            ]


def test_token_packs_sharing_a_container_are_refused(codec: LightLLMCodec) -> None:
    """Metadata that references another entry's metadata (a DAG) is refused on both paths."""
    entries = [(8, "a", {"k": 1}, FinishStatus(0)), (16, "b", {"k": 300}, FinishStatus(0))]
    packs = token_packs(codec, entries)
    memo = -1
    first_meta = None
    for op, _, pos in pickletools.genops(packs):
        if op.name == "MEMOIZE":
            memo += 1
            if first_meta is None and packs[pos - 1 : pos] == b"}" and memo > 3:
                first_meta = memo
    assert first_meta is not None
    # the second entry's value 300 (BININT2) becomes a reference to the first's metadata
    tampered = packs.replace(b"M\x2c\x01", b"h" + bytes((first_meta,)) + b"N\x86", 1)
    with pytest.raises(WireError):
        codec.decode_node_message(tampered)
    with pytest.raises(WireError):
        codec.loads(tampered)
