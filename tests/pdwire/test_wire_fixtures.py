"""The wire format as byte-level expectations stated here, without ../shared (issue 15).

Each expected frame is written out opcode by opcode: it is what LightLLM's own pickler writes
for the message (the golden tests check that against ../shared when it is present), what our
encoder must write, and a shape our decoder must accept. Protocol 4: PROTO 4, one FRAME of the
body's length, MEMOIZE after every str, bytes, tuple, dict, list, class and built object.
"""

from __future__ import annotations

import struct

import pytest

from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import MAX_FRAME_BYTES
from pdwire.mirrorpickle import dumps
from pdwire.pd_io import MultimodalParams, ObjType, PD_Master_Obj, PDDecodeNodeInfo, PDUpKVStatus
from pdwire.structs import FinishStatus

M = b"\x94"  # MEMOIZE


def frame(body: bytes) -> bytes:
    return b"\x80\x04\x95" + struct.pack("<Q", len(body) + 1) + body + b"."


def text(value: str) -> bytes:  # SHORT_BINUNICODE, memoized
    raw = value.encode()
    return b"\x8c" + bytes((len(raw),)) + raw + M


PD_IO_MODULE = text("lightllm.server.pd_io_struct")
OBJTYPE = PD_IO_MODULE + text("ObjType") + b"\x93" + M  # STACK_GLOBAL
GROUP = b"J\x08\x35\x0c\x00"  # BININT 800008


def obj_type(value: int) -> bytes:
    return OBJTYPE + b"K" + bytes((value,)) + b"\x85" + M + b"R" + M  # ObjType((value,))


FINISH_STATUS = (
    text("_ctypes")
    + text("_unpickle")
    + b"\x93"
    + M
    + text("lightllm.server.core.objs.req")
    + text("FinishStatus")
    + b"\x93"
    + M
)


def finish_status(value: int) -> bytes:
    """_ctypes._unpickle(FinishStatus, ({}, 4 bytes)), the classes first written out."""
    return (
        FINISH_STATUS
        + b"}"
        + M
        + b"C\x04"
        + struct.pack("<i", value)
        + M
        + b"\x86"
        + M
        + b"\x86"
        + M
        + b"R"
        + M
    )


FIXTURES: dict[str, tuple[str, object, bytes]] = {
    "abort": ("v1.1.0", (ObjType.ABORT, 800008), frame(obj_type(1) + GROUP + b"\x86" + M)),
    "heartbeat (v1.2.0)": ("v1.2.0", (ObjType.HEARTBEAT,), frame(obj_type(6) + b"\x85" + M)),
    "prompt ids (v1.2.0)": (
        "v1.2.0",
        (ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS, 800008, [90, 107, 300]),
        frame(obj_type(4) + GROUP + b"]" + M + b"(KZKkM\x2c\x01e" + b"\x87" + M),
    ),
    "PD_Master_Obj": (
        "v1.1.0",
        PD_Master_Obj(7, "10.0.0.50:60011"),
        frame(
            PD_IO_MODULE
            + text("PD_Master_Obj")
            + b"\x93"
            + M
            + b")\x81"  # NEWOBJ with no arguments
            + M
            + b"}"
            + M
            + b"("
            + text("node_id")
            + b"K\x07"
            + text("host_ip_port")
            + text("10.0.0.50:60011")
            + b"u"  # SETITEMS
            + b"b"  # BUILD
        ),
    ),
    "PDUpKVStatus (v1.2.0)": (
        "v1.2.0",
        PDUpKVStatus(800008, 0, b"xy"),
        frame(
            PD_IO_MODULE
            + text("PDUpKVStatus")
            + b"\x93"
            + M
            + b")\x81"
            + M
            + b"}"
            + M
            + b"("
            + text("group_request_id")
            + GROUP
            + text("pd_master_node_id")
            + b"K\x00"
            + text("pd_kv_trans_params")
            + b"C\x02xy"
            + M
            + b"ub"
        ),
    ),
    "decode node info to P (v1.2.0)": (
        "v1.2.0",
        (
            ObjType.PD_REQ_DECODE_NODE_INFO,
            800008,
            PDDecodeNodeInfo(5, 0, "5_0", b"\x80meta", 16, b"desc", 800008, 3),
        ),
        frame(
            obj_type(5)
            + GROUP
            + b"h\x00"  # the module's name again: a memo reference
            + text("PDDecodeNodeInfo")
            + b"\x93"
            + M
            + b")\x81"
            + M
            + b"}"
            + M
            + b"("
            + text("decode_node_id")
            + b"K\x05"
            + text("pd_master_node_id")
            + b"K\x00"
            + text("agent_name")
            + text("5_0")
            + text("agent_metadata")
            + b"C\x05\x80meta"  # bytes fields exactly as D sent them
            + M
            + text("num_pages")
            + b"K\x10"
            + text("page_reg_desc")
            + b"C\x04desc"
            + M
            + text("request_id")
            + GROUP
            + text("ready_kv_len")
            + b"K\x03"
            + b"ub"
            + b"\x87"
            + M
        ),
    ),
    "token packs with load (v1.1.0)": (
        "v1.1.0",
        (
            ObjType.TOKEN_PACKS,
            [(800008, " AI", {"id": 15}, 1)],
            {"total_token_usage_rate": 0.5, "client_ip_port": "h:1"},
        ),
        frame(
            obj_type(3)
            + b"]"
            + M
            + b"("  # one entry: MARK ... TUPLE
            + GROUP
            + text(" AI")
            + b"}"
            + M
            + text("id")
            + b"K\x0f"
            + b"s"  # one item: SETITEM
            + finish_status(1)
            + b"t"
            + M
            + b"a"  # one entry: APPEND
            + b"}"
            + M
            + b"("
            + text("total_token_usage_rate")
            + b"G?\xe0\x00\x00\x00\x00\x00\x00"  # BINFLOAT 0.5, big-endian
            + text("client_ip_port")
            + text("h:1")
            + b"u"
            + b"\x87"
            + M
        ),
    ),
    "token packs without load (fc72ffa)": (
        "fc72ffa",
        (ObjType.TOKEN_PACKS, [(800008, " AI", {"id": 15}, 1)]),
        frame(
            obj_type(3)
            + b"]"
            + M
            + b"("
            + GROUP
            + text(" AI")
            + b"}"
            + M
            + text("id")
            + b"K\x0f"
            + b"s"
            + finish_status(1)
            + b"t"
            + M
            + b"a"
            + b"\x86"
            + M
        ),
    ),
}


def build(version: str, message: object) -> bytes:
    codec = LightLLMCodec(version)
    if isinstance(message, tuple) and message[0] is ObjType.TOKEN_PACKS:
        entries = [(e[0], e[1], e[2], FinishStatus(e[3])) for e in message[1]]
        return codec.encode_token_packs(entries, message[2] if len(message) == 3 else None)
    if isinstance(message, tuple) and message[0] is ObjType.ABORT:
        return codec.encode_abort(message[1])
    if isinstance(message, tuple) and message[0] is ObjType.HEARTBEAT:
        return codec.encode_heartbeat()
    if isinstance(message, tuple) and message[0] is ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS:
        return codec.encode_prompt_ids(message[1], message[2])
    if isinstance(message, tuple) and message[0] is ObjType.PD_REQ_DECODE_NODE_INFO:
        return codec.encode_decode_node_info(message[1], message[2])
    if isinstance(message, PDUpKVStatus):
        return codec.encode_kv_status(message)
    return dumps(message)


def plain(value: object) -> object:
    """FinishStatus (a ctypes struct, compared by identity) as its int, recursively."""
    if isinstance(value, FinishStatus):
        return value.status
    if isinstance(value, tuple | list):
        return type(value)(plain(v) for v in value)
    return value


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_our_encoder_writes_the_stated_bytes(name: str) -> None:
    version, message, expected = FIXTURES[name]
    assert build(version, message) == expected


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_our_decoder_accepts_the_stated_bytes(name: str) -> None:
    version, message, raw = FIXTURES[name]
    codec = LightLLMCodec(version)
    assert plain(codec.loads(raw)) == message
    if isinstance(message, tuple):  # a node frame: through decode_node_message too
        kind, payload, extra = codec.decode_node_message(raw)
        assert kind is message[0]
        if kind is ObjType.TOKEN_PACKS:
            assert plain(payload) == message[1]
            assert extra == (message[2] if len(message) == 3 else None)


@pytest.mark.parametrize(
    ("version", "struct_bytes"), [("v1.1.0", 20212), ("fc72ffa", 17612), ("v1.2.0", 28420)]
)
def test_req_frames_carry_the_versions_struct(version: str, struct_bytes: int) -> None:
    codec = LightLLMCodec(version)
    params = codec.layout.new_sampling_params()
    params.group_request_id = 800008
    raw = codec.encode_req("What is AI?", params)
    head = (
        obj_type(2)
        + text("What is AI?")
        + text("_ctypes")
        + text("_unpickle")
        + b"\x93"
        + M
        + text("lightllm.server.core.objs.sampling_params")
        + text("SamplingParams")
        + b"\x93"
        + M
        + b"}"
        + M
        + b"B"
        + struct.pack("<I", struct_bytes)
    )
    tail = (
        M
        + b"\x86"
        + M
        + b"\x86"
        + M
        + b"R"
        + M
        + text("lightllm.server.multimodal_params")
        + text("MultimodalParams")
        + b"\x93"
        + M
        + b")\x81"
        + M
        + b"}"
        + M
        + b"("
        + text("images")
        + b"]"
        + M
        + text("audios")
        + b"]"
        + M
        + b"ub"
        + b"\x87"  # (prompt, params, multimodal)
        + M
        + b"\x86"  # (REQ, payload)
        + M
        + b"."
    )
    assert raw[:11] == b"\x80\x04\x95" + struct.pack("<Q", len(raw) - 11)
    assert raw[11:].startswith(head) and raw.endswith(tail)
    assert len(raw) == 11 + len(head) + struct_bytes + len(tail)
    prompt, decoded, multimodal = codec.decode_req(codec.decode_node_message(raw)[1])
    assert (prompt, decoded.group_request_id, multimodal) == (
        "What is AI?",
        800008,
        MultimodalParams(),
    )


def test_the_largest_frame_fits_the_limit_three_times() -> None:
    """MAX_FRAME_BYTES: a REQ to D (v1.2.0, the largest struct) for a 1M-token prompt of
    ids as large as a vocabulary allows is 5.3 MB; 16 MiB leaves 3x."""
    codec = LightLLMCodec("v1.2.0")
    ids = [2**31 - 1 - i for i in range(1 << 20)]
    raw = codec.encode_req(ids, codec.layout.new_sampling_params())
    assert 5_000_000 < len(raw) < 5_600_000
    assert len(raw) * 3 < MAX_FRAME_BYTES
