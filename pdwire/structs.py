"""ctypes mirrors of LightLLM's shared-memory structs, one layout table per LightLLM version.

The raw bytes of these structs travel inside LightLLM's pickles, so their layout must match
LightLLM's byte for byte (``../shared/lightllm_golden/<version>/ctypes_layout.json``).
A new LightLLM version with another layout is one more entry in ``LAYOUTS``.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import Any

SAMPLING_PARAMS_MODULE = "lightllm.server.core.objs.sampling_params"
REQ_MODULE = "lightllm.server.core.objs.req"

MAX_STOP_SEQUENCES = 10
STOP_SEQUENCE_MAX_LENGTH = 256
STOP_SEQUENCE_STR_MAX_LENGTH = 256
REGULAR_CONSTRAINT_MAX_LENGTH = 2048
ALLOWED_TOKEN_IDS_MAX_LENGTH = 256
INVALID_TOKEN_IDS_MAX_LENGTH = 10  # v1.2.0
PD_KV_TRANS_PARAM_OBJ_MAX_BYTES = 8192  # v1.2.0
PD_KV_TRANS_PARAMS_MODULE = "lightllm.server.core.objs.pd_kv_trans_params"


class FinishStatus(ctypes.Structure):
    """One int32: 0 not finished, 1 stopped (eos or stop sequence), 2 length limit.

    From LightLLM v1.2.0 also 3 aborted and 4 error (D's forced end after a failed KV move).
    """

    _pack_ = 4
    _fields_ = [("status", ctypes.c_int)]
    __lightllm_name__ = (REQ_MODULE, "FinishStatus")

    NO_FINISH = 0
    FINISHED_STOP = 1
    FINISHED_LENGTH = 2
    FINISHED_ABORTED = 3
    FINISHED_ERROR = 4

    def is_finished(self) -> bool:
        return self.status in _FINISH_REASONS

    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self.status)


_FINISH_REASONS = {1: "stop", 2: "length", 3: "abort", 4: "error"}


def lightllm_name(cls: type) -> tuple[str, str]:
    """The (module, qualname) a mirror class of ours travels as on LightLLM's wire."""
    name: tuple[str, str] = getattr(cls, "__lightllm_name__")  # noqa: B009 - set by _named
    return name


def _named(cls: type, name: str) -> type:
    cls.__lightllm_name__ = (SAMPLING_PARAMS_MODULE, name)  # type: ignore[attr-defined]
    return cls


class _ByteConstraint(ctypes.Structure):
    _pack_ = 4
    _fields_ = [
        ("constraint", ctypes.c_ubyte * REGULAR_CONSTRAINT_MAX_LENGTH),
        ("length", ctypes.c_int),
    ]


class RegularConstraint(_ByteConstraint):
    pass


class GuidedGrammar(_ByteConstraint):
    pass


class GuidedJsonSchema(_ByteConstraint):
    pass


class AllowedTokenIds(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("ids", ctypes.c_int * ALLOWED_TOKEN_IDS_MAX_LENGTH), ("size", ctypes.c_int)]


class InvalidTokenIds(ctypes.Structure):
    """v1.2.0: token ids the sampler must never pick (``logit_bias`` keys)."""

    _pack_ = 4
    _fields_ = [("ids", ctypes.c_int * INVALID_TOKEN_IDS_MAX_LENGTH), ("size", ctypes.c_int)]


class NodeUUId(ctypes.Structure):
    """v1.2.0: a 128-bit id as two uint64."""

    _pack_ = 4
    _fields_ = [("node_id_high", ctypes.c_uint64), ("node_id_low", ctypes.c_uint64)]

    @property
    def node_id(self) -> int:
        return (self.node_id_high << 64) | self.node_id_low

    @node_id.setter
    def node_id(self, value: int) -> None:
        self.node_id_high, self.node_id_low = split_u128(value)


class PDKVTransParamObj(ctypes.Structure):
    """v1.2.0: P's copy of the pickled PDDecodeNodeInfo; the master sends it empty."""

    _pack_ = 4
    _fields_ = [
        ("data", ctypes.c_ubyte * PD_KV_TRANS_PARAM_OBJ_MAX_BYTES),
        ("data_len", ctypes.c_int),
    ]


class ExponentialDecayLengthPenalty(ctypes.Structure):
    _pack_ = 4
    _fields_ = [("item0", ctypes.c_int), ("item1", ctypes.c_float)]


class DecodeNode(ctypes.Structure):
    """Where a prefill node sends the KV cache; 128-bit ids are split into two uint64."""

    _fields_ = [
        ("exists", ctypes.c_bool),
        ("node_id_high", ctypes.c_uint64),
        ("node_id_low", ctypes.c_uint64),
        ("ip", ctypes.c_int32 * 4),
        ("rpyc_port", ctypes.c_int),
        ("max_new_tokens", ctypes.c_int),
        ("pd_master_node_id_high", ctypes.c_uint64),
        ("pd_master_node_id_low", ctypes.c_uint64),
    ]

    @property
    def node_id(self) -> int:
        return (self.node_id_high << 64) | self.node_id_low

    @property
    def pd_master_node_id(self) -> int:
        return (self.pd_master_node_id_high << 64) | self.pd_master_node_id_low

    @property
    def ip_str(self) -> str:
        return ".".join(str(part) for part in self.ip)

    def fill(
        self, node_id: int, ip: str, rpyc_port: int, max_new_tokens: int, pd_master_node_id: int
    ) -> None:
        self.exists = True
        self.node_id_high, self.node_id_low = split_u128(node_id)
        try:  # dotted-quad only, as ipaddress.IPv4Address, in C: once per request
            packed = socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            raise ValueError(f"not an IPv4 address: {ip!r}") from None
        self.ip[:] = list(packed)
        self.rpyc_port = rpyc_port
        self.max_new_tokens = max_new_tokens
        hi, lo = split_u128(pd_master_node_id)
        self.pd_master_node_id_high, self.pd_master_node_id_low = hi, lo


for _cls, _name in [
    (RegularConstraint, "RegularConstraint"),
    (GuidedGrammar, "GuidedGrammar"),
    (GuidedJsonSchema, "GuidedJsonSchema"),
    (AllowedTokenIds, "AllowedTokenIds"),
    (ExponentialDecayLengthPenalty, "ExponentialDecayLengthPenalty"),
    (DecodeNode, "DecodeNode"),
    (InvalidTokenIds, "InvalidTokenIds"),
    (NodeUUId, "NodeUUId"),
]:
    _named(_cls, _name)
PDKVTransParamObj.__lightllm_name__ = (  # type: ignore[attr-defined]
    PD_KV_TRANS_PARAMS_MODULE,
    "PDKVTransParamObj",
)


def split_u128(value: int) -> tuple[int, int]:
    if not 0 <= value < 1 << 128:
        raise ValueError(f"id {value} does not fit in 128 bits")
    return value >> 64, value & ((1 << 64) - 1)


class SamplingParamsBase(ctypes.Structure):
    """Helpers shared by every version's SamplingParams layout."""

    def stop_token_sequences(self) -> list[list[int]]:
        groups = self.stop_sequences
        return [
            list(groups.groups[i].sequence[: groups.groups[i].size]) for i in range(groups.size)
        ]

    def set_stop_sequences(self, sequences: list[list[int]], texts: list[str]) -> None:
        groups = self.stop_sequences
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        for i, (ids, text) in enumerate(zip(sequences, texts, strict=True)):
            if len(ids) > STOP_SEQUENCE_MAX_LENGTH:
                raise ValueError(
                    f"stop sequence {i} has more than {STOP_SEQUENCE_MAX_LENGTH} tokens"
                )
            group = groups.groups[i]
            group.sequence[: len(ids)] = ids
            group.size = len(ids)
            if hasattr(group, "sequence_str"):
                raw = text.encode("utf-8")[:STOP_SEQUENCE_STR_MAX_LENGTH]
                group.sequence_str = raw
                group.sequence_str_len = len(raw)
        groups.size = len(sequences)

    def stop_strings(self) -> list[str]:
        groups = self.stop_sequences
        out = []
        for i in range(groups.size):
            group = groups.groups[i]
            if hasattr(group, "sequence_str"):
                out.append(
                    bytes(group.sequence_str[: group.sequence_str_len]).decode("utf-8", "replace")
                )
        return out


def _sampling_params_fields(stop_groups: type, version: str) -> list[tuple[str, Any]]:
    if version == "v1.2.0":
        return _sampling_params_fields_v120(stop_groups)
    return [
        ("best_of", ctypes.c_int),
        ("n", ctypes.c_int),
        ("do_sample", ctypes.c_bool),
        ("presence_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("repetition_penalty", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("top_p", ctypes.c_float),
        ("top_k", ctypes.c_int),
        ("ignore_eos", ctypes.c_bool),
        ("image_max_patch_num", ctypes.c_int),
        ("max_new_tokens", ctypes.c_int),
        ("min_new_tokens", ctypes.c_int),
        ("input_penalty", ctypes.c_bool),
        ("regular_constraint", RegularConstraint),
        ("guided_grammar", GuidedGrammar),
        ("guided_json", GuidedJsonSchema),
        ("allowed_token_ids", AllowedTokenIds),
        ("stop_sequences", stop_groups),
        ("exponential_decay_length_penalty", ExponentialDecayLengthPenalty),
        ("group_request_id", ctypes.c_int64),
        ("suggested_dp_index", ctypes.c_int),
        ("move_kv_to_decode_node", DecodeNode),
        ("skip_special_tokens", ctypes.c_bool),
        ("add_special_tokens", ctypes.c_bool),
        ("add_spaces_between_special_tokens", ctypes.c_bool),
        ("print_eos_token", ctypes.c_bool),
    ]


def _sampling_params_fields_v120(stop_groups: type) -> list[tuple[str, Any]]:
    """v1.2.0: invalid_token_ids; the decode node's address gives way to the master id and
    D's transfer descriptor; disable_prompt_cache, seed and prompt_logprobs at the end."""
    older = _sampling_params_fields(stop_groups, "v1.1.0")
    names = [name for name, _ in older]
    head = older[: names.index("allowed_token_ids") + 1]
    middle = older[names.index("stop_sequences") : names.index("suggested_dp_index") + 1]
    bools = older[names.index("skip_special_tokens") :]
    return (
        head
        + [("invalid_token_ids", InvalidTokenIds)]
        + middle
        + [("pd_master_node_id", NodeUUId), ("pd_kv_trans_params", PDKVTransParamObj)]
        + bools
        + [
            ("disable_prompt_cache", ctypes.c_bool),
            ("seed", ctypes.c_int64),
            ("prompt_logprobs", ctypes.c_int),
        ]
    )


def _build_layout(version: str, stop_sequence_fields: list[tuple[str, Any]]) -> Layout:
    stop_sequence = type(
        "StopSequence", (ctypes.Structure,), {"_pack_": 4, "_fields_": stop_sequence_fields}
    )
    stop_groups = type(
        "StopSequenceGroups",
        (ctypes.Structure,),
        {
            "_pack_": 4,
            "_fields_": [
                ("groups", stop_sequence * MAX_STOP_SEQUENCES),  # type: ignore[operator]
                ("size", ctypes.c_int),
            ],
        },
    )
    sampling_params = type(
        "SamplingParams",
        (SamplingParamsBase,),
        {"_pack_": 4, "_fields_": _sampling_params_fields(stop_groups, version)},
    )
    for cls in (stop_sequence, stop_groups, sampling_params):
        _named(cls, cls.__name__)
    return Layout(version, sampling_params, stop_sequence, stop_groups)


@dataclass(frozen=True)
class Layout:
    version: str
    SamplingParams: type[SamplingParamsBase]
    StopSequence: type[ctypes.Structure]
    StopSequenceGroups: type[ctypes.Structure]

    def new_sampling_params(self) -> SamplingParamsBase:
        """A SamplingParams with LightLLM's defaults for the fields the master does not set."""
        params = self.SamplingParams()
        params.best_of = 1
        params.n = 1
        params.do_sample = False
        params.repetition_penalty = 1.0
        params.temperature = 1.0
        params.top_p = 1.0
        params.top_k = -1
        params.image_max_patch_num = -1
        params.max_new_tokens = 16
        params.min_new_tokens = 1
        params.exponential_decay_length_penalty.item0 = 1
        params.exponential_decay_length_penalty.item1 = 1.0
        params.group_request_id = -1
        params.suggested_dp_index = -1
        params.skip_special_tokens = True
        params.add_special_tokens = True
        params.add_spaces_between_special_tokens = True
        if self.version == "v1.2.0":  # its defaults: no special-token skipping, random seed
            params.skip_special_tokens = False
            params.max_new_tokens = 65535
            params.seed = -1
            params.prompt_logprobs = -1
        return params


_STOP_SEQUENCE_FC72FFA = [
    ("sequence", ctypes.c_int * STOP_SEQUENCE_MAX_LENGTH),
    ("size", ctypes.c_int),
]
_STOP_SEQUENCE_V110 = _STOP_SEQUENCE_FC72FFA + [
    ("sequence_str", ctypes.c_char * STOP_SEQUENCE_STR_MAX_LENGTH),
    ("sequence_str_len", ctypes.c_int),
]

LAYOUTS: dict[str, Layout] = {
    "v1.1.0": _build_layout("v1.1.0", _STOP_SEQUENCE_V110),
    "fc72ffa": _build_layout("fc72ffa", _STOP_SEQUENCE_FC72FFA),
    "v1.2.0": _build_layout("v1.2.0", _STOP_SEQUENCE_V110),
}
DEFAULT_VERSION = "v1.1.0"


def layout_for(version: str) -> Layout:
    try:
        return LAYOUTS[version]
    except KeyError:
        known = ", ".join(sorted(LAYOUTS))
        raise ValueError(f"unknown LightLLM version {version!r}; known: {known}") from None
