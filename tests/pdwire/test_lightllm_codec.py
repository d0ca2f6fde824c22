from __future__ import annotations

import base64
import ctypes
import json
import pickle
from pathlib import Path

import pytest

from pdwire.errors import ForbiddenGlobalError, MalformedMessageError
from pdwire.lightllm import LightLLMCodec
from pdwire.mirrorpickle import dumps
from pdwire.pd_io import MultimodalParams, ObjType, PD_Master_Obj, UpKVStatus, group_request_id
from pdwire.structs import (
    DecodeNode,
    FinishStatus,
    InvalidTokenIds,
    NodeUUId,
    PDKVTransParamObj,
    SamplingParamsBase,
    layout_for,
)

VERSIONS = ["v1.1.0", "fc72ffa", "v1.2.0"]
V11 = ["v1.1.0", "fc72ffa"]


def golden(root: Path, version: str, name: str) -> bytes:
    return (root / version / name).read_bytes()


@pytest.mark.parametrize("version", VERSIONS)
def test_struct_layouts_match_lightllm_ctypes(golden_root: Path, version: str) -> None:
    layout = layout_for(version)
    reference = json.loads(golden(golden_root, version, "ctypes_layout.json"))
    ours = {
        "SamplingParams": layout.SamplingParams,
        "StopSequence": layout.StopSequence,
        "StopSequenceGroups": layout.StopSequenceGroups,
        "FinishStatus": FinishStatus,
    }
    if version == "v1.2.0":
        ours.update(
            InvalidTokenIds=InvalidTokenIds, NodeUUId=NodeUUId, PDKVTransParamObj=PDKVTransParamObj
        )
    else:
        ours["DecodeNode"] = DecodeNode
    checked = 0
    for entry in reference:
        cls = ours.get(entry["class"].rsplit(".", 1)[1])
        if cls is None:
            continue
        assert ctypes.sizeof(cls) == entry["size"], entry["class"]
        for f in entry["fields"]:
            assert (getattr(cls, f["name"]).offset, getattr(cls, f["name"]).size) == (
                f["offset"],
                f["size"],
            ), f"{entry['class']}.{f['name']}"
        checked += 1
    assert checked == len(ours)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "name",
    [
        "abort.pkl",
        "pd_master_obj.pkl",
        "req_to_prefill.pkl",
        "req_to_decode.pkl",
        "token_packs_prefill.pkl",
        "token_packs_decode.pkl",
    ],
)
def test_every_golden_pickle_decodes_and_reencodes_byte_for_byte(
    golden_root: Path, version: str, name: str
) -> None:
    raw = golden(golden_root, version, name)
    assert dumps(LightLLMCodec(version).loads(raw)) == raw


PER_REQUEST = ("max_new_tokens", "min_new_tokens", "group_request_id", "suggested_dp_index")


def golden_req_to_prefill(golden_root: Path, version: str) -> tuple[str, dict, dict]:
    decoded = json.loads(golden(golden_root, version, "decoded.json"))["req_to_prefill.pkl"]
    return decoded[1][0], decoded[1][1], decoded[1][1]["move_kv_to_decode_node"]


def set_shared_fields(params: ctypes.Structure, ref: dict) -> None:
    """The golden request's fields that a master fills once per parameter set."""
    for key in (
        "best_of",
        "n",
        "do_sample",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "ignore_eos",
        "skip_special_tokens",
        "print_eos_token",
    ):
        setattr(params, key, ref[key])


def fill_decode_node(target: DecodeNode, node: dict) -> None:
    target.fill(
        node_id=(node["node_id_high"] << 64) | node["node_id_low"],
        ip=".".join(str(x) for x in node["ip"]["nonzero_prefix"]),
        rpyc_port=node["rpyc_port"],
        max_new_tokens=node["max_new_tokens"],
        pd_master_node_id=(node["pd_master_node_id_high"] << 64) | node["pd_master_node_id_low"],
    )


def set_stop(params: SamplingParamsBase, ref: dict) -> None:
    stop = ref["stop_sequences"]["groups"]["nonzero_prefix"]
    ids = [g["sequence"]["nonzero_prefix"] for g in stop[: ref["stop_sequences"]["size"]]]
    params.set_stop_sequences(ids, ["\n\n"])  # the golden stop sequence is "\n\n" = [13, 13]


@pytest.mark.parametrize("version", V11)
def test_req_to_prefill_built_from_scratch_equals_lightllm_bytes(
    golden_root: Path, version: str
) -> None:
    codec = LightLLMCodec(version)
    prompt, ref, node = golden_req_to_prefill(golden_root, version)
    params = codec.layout.new_sampling_params()
    set_shared_fields(params, ref)
    for key in PER_REQUEST:
        setattr(params, key, ref[key])
    set_stop(params, ref)
    fill_decode_node(params.move_kv_to_decode_node, node)
    built = codec.encode_req(prompt, params)
    assert built == golden(golden_root, version, "req_to_prefill.pkl")


@pytest.mark.parametrize("version", V11)
def test_req_to_prefill_set_in_its_frame_equals_lightllm_bytes(
    golden_root: Path, version: str
) -> None:
    """As the master builds it: a shared filled struct copied into the frame, the request's
    fields set there, the decode node's struct copied in whole and its max_new_tokens set."""
    codec = LightLLMCodec(version)
    prompt, ref, node = golden_req_to_prefill(golden_root, version)
    shared = codec.layout.new_sampling_params()
    set_shared_fields(shared, ref)
    before = bytes(shared)
    built = codec.req_frame(prompt, shared)
    assert built is not None
    frame, params = built
    for key in PER_REQUEST:
        setattr(params, key, ref[key])
    set_stop(params, ref)
    target = DecodeNode()
    fill_decode_node(target, {**node, "max_new_tokens": 0})
    slot = params.move_kv_to_decode_node
    params.move_kv_to_decode_node = target
    slot.max_new_tokens = node["max_new_tokens"]
    assert bytes(frame) == golden(golden_root, version, "req_to_prefill.pkl")
    assert bytes(shared) == before


@pytest.mark.parametrize("version", V11)
def test_token_packs_decode_to_entries_and_load(golden_root: Path, version: str) -> None:
    codec = LightLLMCodec(version)
    kind, payload, load = codec.decode_node_message(
        golden(golden_root, version, "token_packs_decode.pkl")
    )
    assert kind is ObjType.TOKEN_PACKS
    entries = codec.decode_token_packs(payload)
    assert [(e[0], e[1], e[3].status) for e in entries][:2] == [
        (800008, " intelligence", 0),
        (800008, " is", 0),
    ]
    assert entries[3][3].finish_reason() == "stop"
    if version == "v1.1.0":
        assert load == {"total_token_usage_rate": 0.42, "client_ip_port": "10.0.0.141:8121"}
    else:
        assert load is None


def test_decoded_statuses_are_shared_per_value_and_still_checked() -> None:
    codec = LightLLMCodec(share_statuses=True)
    entries = [(8 * i, "t", {"id": i}, FinishStatus(i % 3)) for i in range(6)]
    for _ in range(2):  # the second frame is served from the shared instances
        _, payload, _ = codec.decode_node_message(codec.encode_token_packs(entries, None))
        decoded = codec.decode_token_packs(payload)
        assert [e[3].status for e in decoded] == [0, 1, 2, 0, 1, 2]
        assert decoded[0][3] is decoded[3][3]
    wrong_size = dumps((ObjType.TOKEN_PACKS, [(8, "t", {}, FinishStatus(0))], {})).replace(
        b"C\x04\x00\x00\x00\x00", b"C\x05\x00\x00\x00\x00\x00"
    )
    with pytest.raises(MalformedMessageError, match="FinishStatus is 5 bytes"):
        codec.loads(wrong_size)


@pytest.mark.parametrize("version", V11)  # v1.2.0: test_lightllm_v120
def test_token_packs_built_from_scratch_equal_lightllm_bytes(
    golden_root: Path, version: str
) -> None:
    codec = LightLLMCodec(version)
    decoded = json.loads(golden(golden_root, version, "decoded.json"))["token_packs_decode.pkl"]
    entries = [(e[0], e[1], dict(e[2]), FinishStatus(e[3]["status"])) for e in decoded[1]]
    load = decoded[2] if len(decoded) == 3 else None
    assert codec.encode_token_packs(entries, load) == golden(
        golden_root, version, "token_packs_decode.pkl"
    )


@pytest.mark.parametrize("version", V11)
def test_req_to_prefill_fields(golden_root: Path, version: str) -> None:
    codec = LightLLMCodec(version)
    kind, payload, _ = codec.decode_node_message(golden(golden_root, version, "req_to_prefill.pkl"))
    assert kind is ObjType.REQ
    prompt, params, multimodal = codec.decode_req(payload)
    assert prompt == "What is AI?"
    assert params.max_new_tokens == 1
    assert params.group_request_id == 800008
    assert params.stop_token_sequences() == [[13, 13]]
    node = params.move_kv_to_decode_node
    assert node.exists and node.ip_str == "10.0.0.141" and node.rpyc_port == 42000
    assert node.pd_master_node_id == 20095106327972375235668719608427373040
    assert multimodal == MultimodalParams()
    if version == "v1.1.0":
        assert params.stop_strings() == ["\n\n"]


@pytest.mark.parametrize("version", VERSIONS)
def test_pd_master_obj_and_registered_objects(golden_root: Path, version: str) -> None:
    codec = LightLLMCodec(version)
    obj = codec.decode_pd_master_obj(golden(golden_root, version, "pd_master_obj.pkl"))
    assert obj == PD_Master_Obj(20095106327972375235668719608427373040, "10.0.0.50:60011")
    assert codec.encode_pd_master_obj(obj) == golden(golden_root, version, "pd_master_obj.pkl")
    data = json.loads(golden(golden_root, version, "registered_objects.json"))["data"]
    objs = codec.decode_registered_objects(base64.b64decode(data))
    assert [o.host_ip_port for o in objs.values()] == ["10.0.0.50:60011", "10.0.0.51:60012"]
    assert base64.b64encode(codec.encode_registered_objects(objs)).decode() == data


def test_kv_move_status_json_roundtrip(golden_root: Path) -> None:
    raw = json.loads(golden(golden_root, "v1.1.0", "kv_move_status.json"))
    status = UpKVStatus.from_json_dict(raw)
    assert (status.group_request_id, status.dp_index) == (800008, 3)
    assert status.to_json_dict() == raw


def test_version_mismatch_is_named() -> None:
    params = layout_for("fc72ffa").new_sampling_params()
    raw = LightLLMCodec("fc72ffa").encode_req("hi", params)
    with pytest.raises(MalformedMessageError, match="--lightllm_version"):
        LightLLMCodec("v1.1.0").loads(raw)


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_Evil(), protocol=4),
        pickle.dumps((ObjType.REQ, ("x", eval)), protocol=4),  # builtins.eval
    ],
)
def test_hostile_pickles_are_rejected_without_running_code(payload: bytes) -> None:
    with pytest.raises(ForbiddenGlobalError):
        LightLLMCodec().loads(payload)


def test_garbage_is_a_malformed_message() -> None:
    with pytest.raises(MalformedMessageError, match="protocol 2-5"):
        LightLLMCodec().loads(b"cos\nsystem\n(S'echo pwned'\ntR.")  # protocol 0 GLOBAL
    with pytest.raises(MalformedMessageError):
        LightLLMCodec().loads(b"\x80\x04not a pickle")
    with pytest.raises(MalformedMessageError):
        LightLLMCodec().decode_node_message(dumps([1, 2, 3]))


def test_ctypes_unpickle_refuses_structs_outside_the_allowlist() -> None:
    with pytest.raises(ForbiddenGlobalError):
        LightLLMCodec().loads(pickle.dumps(DecodeNode(), protocol=4))


def test_group_request_id() -> None:
    assert group_request_id(800013) == 800008
    assert group_request_id(800008) == 800008
