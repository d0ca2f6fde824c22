"""LightLLM v1.2.0's PD messages against the frames its own classes build (../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdwire.errors import MalformedMessageError
from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import detect_version
from pdwire.mirrorpickle import dumps
from pdwire.pd_io import MultimodalParams, ObjType, PDDecodeNodeInfo, PDUpKVStatus
from pdwire.structs import FinishStatus

MASTER_ID = 20095106327972375235668719608427373040
DECODE_ID = 214933908099603316458134831733103562640
PROMPT_IDS = [90, 107, 100, 119, 35, 108, 118, 35, 68, 76, 66]


def golden(root: Path, name: str) -> bytes:
    return (root / "v1.2.0" / name).read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "heartbeat.pkl",
        "prefill_prompt_ids.pkl",
        "kv_move_status.pkl",
        "decode_node_info.pkl",
        "token_packs_error.pkl",
    ],
)
def test_new_frames_decode_and_reencode_byte_for_byte(golden_root: Path, name: str) -> None:
    raw = golden(golden_root, name)
    assert dumps(LightLLMCodec("v1.2.0").loads(raw)) == raw


def test_heartbeat(golden_root: Path) -> None:
    codec = LightLLMCodec("v1.2.0")
    raw = golden(golden_root, "heartbeat.pkl")
    assert codec.decode_node_message(raw) == (ObjType.HEARTBEAT, None, None)
    assert codec.encode_heartbeat() == raw


def test_prompt_id_upload(golden_root: Path) -> None:
    codec = LightLLMCodec("v1.2.0")
    raw = golden(golden_root, "prefill_prompt_ids.pkl")
    kind, group_id, ids = codec.decode_node_message(raw)
    assert (kind, group_id, ids) == (ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS, 800008, PROMPT_IDS)
    assert codec.encode_prompt_ids(800008, PROMPT_IDS) == raw


def test_kv_status_and_decode_node_info_relay_with_bytes_untouched(golden_root: Path) -> None:
    """D's PDUpKVStatus -> its PDDecodeNodeInfo -> the master's frame to P, as LightLLM's."""
    codec = LightLLMCodec("v1.2.0")
    raw_status = golden(golden_root, "kv_move_status.pkl")
    status = codec.decode_kv_status(raw_status)
    assert (status.group_request_id, status.pd_master_node_id) == (800008, MASTER_ID)
    info = codec.decode_trans_params(status)
    assert info.decode_node_id == DECODE_ID
    assert info.agent_name == f"{DECODE_ID}_0"
    assert (info.num_pages, info.request_id, info.ready_kv_len) == (16, 800008, 0)
    assert (
        info.agent_metadata.startswith(b"\x80\x04") and b"NcclAgentMetadata" in info.agent_metadata
    )
    frame = codec.encode_decode_node_info(800008, info)
    assert frame == golden(golden_root, "decode_node_info.pkl")
    assert codec.encode_kv_status(status) == raw_status
    assert codec.encode_trans_params(info) == status.pd_kv_trans_params
    kind, group_id, relayed = codec.decode_node_message(frame)
    assert (kind, group_id, relayed) == (ObjType.PD_REQ_DECODE_NODE_INFO, 800008, info)


def test_token_packs_carry_error_and_abort_statuses(golden_root: Path) -> None:
    codec = LightLLMCodec("v1.2.0")
    kind, payload, load = codec.decode_node_message(golden(golden_root, "token_packs_error.pkl"))
    entries = codec.decode_token_packs(payload)
    assert kind is ObjType.TOKEN_PACKS and load is not None
    assert [(e[0], e[1], e[3].finish_reason()) for e in entries] == [
        (800008, "</s>", "error"),
        (800016, "", "abort"),
    ]
    assert entries[1][2]["id"] is None
    assert entries[0][2]["logprobs"] == {2: {"logprob": 0.0, "rank": None, "decoded_token": "</s>"}}


def test_token_packs_built_from_scratch_equal_lightllm_bytes(golden_root: Path) -> None:
    decoded = json.loads(golden(golden_root, "decoded.json"))
    codec = LightLLMCodec("v1.2.0")
    for name in ("token_packs_prefill.pkl", "token_packs_decode.pkl"):
        ref = decoded[name]
        entries = []
        shared: dict[str, str] = {}
        for sub_id, text, meta, status in ref[1]:
            # LightLLM's node_mode is one str object (a memo reference after the first), and
            # its decoded_token is the token's text object itself
            meta = {k: shared.setdefault(v, v) if k == "node_mode" else v for k, v in meta.items()}
            meta["logprobs"] = {
                int(k): {**v, "decoded_token": text} for k, v in meta["logprobs"].items()
            }
            entries.append((sub_id, text, meta, FinishStatus(status["status"])))
        assert codec.encode_token_packs(entries, ref[2]) == golden(golden_root, name)


def test_req_fields_and_req_built_from_scratch(golden_root: Path) -> None:
    codec = LightLLMCodec("v1.2.0")
    for name, prompt in (("req_to_prefill.pkl", "What is AI?"), ("req_to_decode.pkl", PROMPT_IDS)):
        raw = golden(golden_root, name)
        kind, payload, _ = codec.decode_node_message(raw)
        got_prompt, params, multimodal = codec.decode_req(payload)
        assert kind is ObjType.REQ and got_prompt == prompt
        assert multimodal == MultimodalParams()
        assert params.pd_master_node_id.node_id == MASTER_ID  # type: ignore[attr-defined]
        assert params.pd_kv_trans_params.data_len == 0  # type: ignore[attr-defined]
        assert (params.group_request_id, params.seed, params.prompt_logprobs) == (800008, -1, -1)  # type: ignore[attr-defined]
        built = codec.layout.new_sampling_params()
        for field_name in ("do_sample", "frequency_penalty", "temperature", "top_p", "top_k"):
            setattr(built, field_name, getattr(params, field_name))
        built.max_new_tokens = params.max_new_tokens
        built.group_request_id = 800008
        built.pd_master_node_id.node_id = MASTER_ID  # type: ignore[attr-defined]
        built.set_stop_sequences([[13, 13]], ["\n\n"])
        assert codec.encode_req(prompt, built) == raw


def test_version_detected_from_registration(golden_root: Path) -> None:
    for version in ("v1.1.0", "fc72ffa", "v1.2.0"):
        for role in ("prefill", "decode"):
            frame = json.loads((golden_root / version / f"register_{role}.json").read_text())
            assert detect_version(frame) == version


def test_v120_kinds_are_refused_by_older_versions(golden_root: Path) -> None:
    raw = golden(golden_root, "heartbeat.pkl")
    with pytest.raises(MalformedMessageError, match="6 is not a valid ObjType"):
        LightLLMCodec("v1.1.0").loads(raw)
    error_packs = golden(golden_root, "token_packs_error.pkl")
    with pytest.raises(MalformedMessageError, match="FinishStatus 4"):
        LightLLMCodec("v1.1.0").loads(error_packs)


def test_objects_compare_by_fields() -> None:
    status = PDUpKVStatus(8, 0, b"x")
    assert status == PDUpKVStatus(8, 0, b"x")
    assert PDDecodeNodeInfo(1, 0, "a", b"", 16, b"", 8, 0).ready_kv_len == 0
