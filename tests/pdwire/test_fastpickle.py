from __future__ import annotations

import _ctypes
import random
from typing import Any

import pytest

from pdwire.lightllm import LightLLMCodec
from pdwire.mirrorpickle import dumps
from pdwire.nativepickle import NativeNamed
from pdwire.pd_io import MultimodalParams, ObjType
from pdwire.structs import FinishStatus, lightllm_name

TEXTS = ["", " is", "é", "✓ unicode", "x" * 255, "y" * 256, "long " * 100, "\ud800"[:0]]
INTS = [
    0,
    1,
    255,
    256,
    65535,
    65536,
    -1,
    -129,
    2**31 - 1,
    -(2**31),
    2**31,
    2**63,
    -(2**70),
    2**128 - 1,
]


def random_meta(rng: random.Random, keys: list[str]) -> dict:
    meta: dict = {}
    for key in rng.sample(keys, rng.randint(0, len(keys))):
        meta[key] = rng.choice(
            [
                rng.choice(INTS),
                rng.random() - 0.5,
                True,
                False,
                None,
                rng.choice(TEXTS),
                [rng.choice(INTS) for _ in range(rng.choice([0, 1, 2, 5, 1001]))],
            ]
        )
    return meta


def random_message(rng: random.Random) -> tuple:
    keys = ["id", "logprob", "cumlogprob", "special", "count_output_tokens", "prompt_ids"]
    shared_text = rng.choice(TEXTS)
    entries = []
    for _ in range(rng.choice([0, 1, 2, 3, 40])):
        text = shared_text if rng.random() < 0.3 else rng.choice(TEXTS) + str(rng.random())
        entries.append(
            (rng.choice(INTS), text, random_meta(rng, keys), FinishStatus(rng.randint(0, 2)))
        )
    load = rng.choice([{}, {"total_token_usage_rate": rng.random(), "client_ip_port": "1.2.3.4:8"}])
    return entries, load


@pytest.mark.parametrize("version", ["v1.1.0", "fc72ffa"])
def test_fast_token_packs_equal_the_general_pickler(version: str) -> None:
    codec = LightLLMCodec(version)
    rng = random.Random(1234)
    for _ in range(300):
        entries, load = random_message(rng)
        message = (
            (ObjType.TOKEN_PACKS, entries, load)
            if codec.token_packs_carry_load
            else (ObjType.TOKEN_PACKS, entries)
        )
        assert codec.encode_token_packs(entries, load) == dumps(message)


def test_messages_past_one_frame_fall_back_to_the_general_pickler() -> None:
    codec = LightLLMCodec()
    entries = [(8 * i, "token text " * 3, {"id": i}, FinishStatus(0)) for i in range(2000)]
    raw = codec.encode_token_packs(entries, {})
    assert len(raw) > 64 * 1024
    assert raw == dumps((ObjType.TOKEN_PACKS, entries, {}))
    assert codec.decode_token_packs(codec.decode_node_message(raw)[1])[1999][0] == 8 * 1999


def random_req(rng: random.Random, codec: LightLLMCodec) -> tuple:
    prompt: str | list[int] = (
        rng.choice(TEXTS) + str(rng.random())
        if rng.random() < 0.5
        else [rng.choice(INTS[:10]) for _ in range(rng.choice([0, 1, 2, 5, 1001, 3000]))]
    )
    if type(prompt) is list and prompt and rng.random() < 0.2:  # not only ints: general pickler
        mixed: list[Any] = prompt
        mixed[rng.randrange(len(mixed))] = rng.choice([True, 2.0, "3", None, [4], 2**70])
    params = codec.layout.new_sampling_params()
    params.max_new_tokens = rng.randint(1, 4096)
    params.group_request_id = rng.randrange(2**40)
    params.temperature = rng.random()
    if rng.random() < 0.5:
        params.set_stop_sequences([[13, 13]], ["\n\n"])
    if rng.random() < 0.1:
        params.note = "an instance attribute"  # type: ignore[attr-defined]
    multimodal = rng.choice([None, MultimodalParams(), MultimodalParams(images=[{"x": 1}])])
    return prompt, params, multimodal


@pytest.mark.parametrize("version", ["v1.1.0", "fc72ffa"])
def test_req_frames_equal_the_general_pickler(version: str) -> None:
    codec = LightLLMCodec(version)
    rng = random.Random(99)
    for _ in range(200):
        prompt, params, multimodal = random_req(rng, codec)
        message = (ObjType.REQ, (prompt, params, multimodal or MultimodalParams()))
        assert codec.encode_req(prompt, params, multimodal) == dumps(message)


def test_req_frames_past_one_frame_fall_back_to_the_general_pickler() -> None:
    codec = LightLLMCodec()
    prompt = list(range(70_000, 90_000))
    params = codec.layout.new_sampling_params()
    raw = codec.encode_req(prompt, params)
    assert len(raw) > 64 * 1024
    assert raw == dumps((ObjType.REQ, (prompt, params, MultimodalParams())))


@pytest.mark.parametrize("version", ["v1.1.0", "fc72ffa"])
def test_req_frames_set_in_place_equal_a_copy_set_and_pickled(version: str) -> None:
    """``req_frame``: fields set on its struct give the frame ``encode_req`` (and the general
    pickler) writes for a copy of the struct with those fields set; the struct is untouched."""
    codec = LightLLMCodec(version)
    rng = random.Random(7)
    checked = 0
    for _ in range(100):
        prompt, shared, _ = random_req(rng, codec)
        if shared.__dict__:
            assert codec.req_frame(prompt, shared) is None
            continue
        before = bytes(shared)
        built = codec.req_frame(prompt, shared)
        if built is None:  # ids past what the fast pickler writes: encode_req's own way
            continue
        checked += 1
        frame, in_frame = built
        copy = type(shared).from_buffer_copy(shared)
        fields = {
            "max_new_tokens": rng.randint(1, 4096),
            "min_new_tokens": rng.randint(1, 8),
            "group_request_id": rng.randrange(2**40),
            "suggested_dp_index": rng.randrange(8),
        }
        for params in (in_frame, copy):
            for name, value in fields.items():
                setattr(params, name, value)
            params.move_kv_to_decode_node.fill(
                node_id=12345678901234567890123,
                ip="10.1.2.3",
                rpyc_port=42000,
                max_new_tokens=fields["max_new_tokens"],
                pd_master_node_id=7,
            )
        assert isinstance(frame, bytearray)
        assert bytes(frame) == codec.encode_req(prompt, copy)
        assert bytes(frame) == dumps((ObjType.REQ, (prompt, copy, MultimodalParams())))
        assert bytes(shared) == before
    assert checked > 50


def test_req_frames_past_one_frame_are_left_to_encode_req() -> None:
    codec = LightLLMCodec()
    assert codec.req_frame(list(range(70_000, 90_000)), codec.layout.new_sampling_params()) is None


class Unnamed:
    """A class no LightLLM message holds."""


def native_named() -> NativeNamed:
    """The C pickler's path (the compiled encoder before it: tests/pdwire/test_packenc.py)."""
    return NativeNamed(
        {
            ObjType: lightllm_name(ObjType),
            FinishStatus: lightllm_name(FinishStatus),
            _ctypes._unpickle: ("_ctypes", "_unpickle"),  # type: ignore[attr-defined]
        },
        compiled=False,
    )


def test_the_c_pickler_renamed_writes_the_general_picklers_bytes() -> None:
    """Token packs of small containers take the C pickler (not None) and come out as the
    general pickler writes them; a message with a 1,001-item list is left to it."""
    native = native_named()
    rng = random.Random(4321)
    taken = declined = 0
    for _ in range(400):
        entries, load = random_message(rng)
        message = (ObjType.TOKEN_PACKS, entries, load)
        raw = native.token_packs(message)
        big = any(len(v) > 1000 for e in entries for v in e[2].values() if type(v) is list)
        if big:
            assert raw is None
            declined += 1
            continue
        assert raw == dumps(message)
        taken += 1
    assert taken > 200 and declined > 50


def test_what_the_c_pickler_cannot_vouch_for_is_left_to_the_general_pickler() -> None:
    native = native_named()
    status = FinishStatus(1)
    ours = b"\x8c\x0epdwire.structs\x94\x8c\x0cFinishStatus\x94\x93\x94"

    def packs(*entries: tuple) -> tuple:
        return (ObjType.TOKEN_PACKS, list(entries), {})

    assert native.token_packs(packs((1, "a", {}, status))) == dumps(packs((1, "a", {}, status)))
    cases = {
        "a class not named": packs((1, "a", {"x": Unnamed()}, status)),
        "a struct not named": packs((1, "a", {}, MultimodalParams())),
        "our reference in a bytes value too": packs((1, "a", {"raw": ours}, status)),
        # the same string object as the class's module: pickle writes a memo reference
        "a memo reference in the class's": packs((1, FinishStatus.__module__, {}, status)),
        "over 1,000 entries": packs(*[(i, "a", {}, status) for i in range(1001)]),
        "a 1,000-item load": (ObjType.TOKEN_PACKS, [], {str(i): i for i in range(1000)}),
        "a 1,001-item dict": packs((1, "a", {str(i): i for i in range(1001)}, status)),
        "a 1,000-item dict": packs((1, "a", {str(i): i for i in range(1000)}, status)),
        "a nested 1,001-item list": packs((1, "a", {"x": ([[0] * 1001],)}, status)),
        "past one frame": packs(*[(i, f"{i}" + "x" * 100, {}, status) for i in range(700)]),
    }
    for why, message in cases.items():
        assert native.token_packs(message) is None, why
        assert LightLLMCodec().encode_token_packs(message[1], message[2]) == dumps(message), why


def odd_value(rng: random.Random) -> object:
    """Values the C pickler reduces or refuses itself: enum members, structs (some with
    instance attributes, some of them unnamed objects), objects of unnamed classes."""
    status = FinishStatus(rng.randint(0, 2))
    if rng.random() < 0.3:
        status.note = rng.choice(["x", 7, [1, 2], Unnamed()])  # type: ignore[attr-defined]
    return rng.choice([ObjType.REQ, ObjType.TOKEN_PACKS, status, Unnamed(), (status, "t")])


def test_picklers_kept_between_messages_write_the_general_picklers_bytes() -> None:
    """One NativeNamed, its pickler reused: messages it takes (after ones it refused midway,
    and with enum members and structs anywhere) come out as the general pickler writes them."""
    native = native_named()
    rng = random.Random(2468)
    taken = declined = 0
    for _ in range(600):
        entries, load = random_message(rng)
        for entry in rng.sample(entries, min(len(entries), 2)):
            entry[2][rng.choice(["odd", "id"])] = odd_value(rng)
        if rng.random() < 0.2:
            load = {**load, "odd": odd_value(rng)}
        message = (ObjType.TOKEN_PACKS, entries, load)
        raw = native.token_packs(message)
        if raw is None:
            declined += 1
            continue
        assert raw == dumps(message)
        taken += 1
    assert taken > 300 and declined > 50


def test_classes_sharing_a_module_are_refused() -> None:
    """Their module would be a memo reference the second time, on one side and not the other."""
    with pytest.raises(ValueError, match="share a module"):
        NativeNamed({ObjType: lightllm_name(ObjType), MultimodalParams: ("m", "MultimodalParams")})
