from __future__ import annotations

import random

import pytest

from pdwire.lightllm import LightLLMCodec
from pdwire.mirrorpickle import dumps
from pdwire.pd_io import MultimodalParams, ObjType
from pdwire.structs import FinishStatus

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
