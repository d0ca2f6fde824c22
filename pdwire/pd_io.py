"""LightLLM's PD wire classes, mirrored: pickles of these load into LightLLM's own classes
(``lightllm.server.pd_io_struct``, ``multimodal_params``: same module paths, same fields), and
LightLLM's pickles decode into these, without importing LightLLM."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pdwire.errors import MalformedMessageError
from pdwire.structs import FinishStatus

PD_IO_MODULE = "lightllm.server.pd_io_struct"
MULTIMODAL_MODULE = "lightllm.server.multimodal_params"
MAX_BEST_OF = 8


class ObjType(enum.Enum):
    ABORT = 1
    REQ = 2
    TOKEN_PACKS = 3
    PD_UPLOAD_PREFILL_PROMPT_IDS = 4  # v1.2.0 on
    PD_REQ_DECODE_NODE_INFO = 5  # v1.2.0 on
    HEARTBEAT = 6  # v1.2.0 on


ObjType.__lightllm_name__ = (PD_IO_MODULE, "ObjType")  # type: ignore[attr-defined]


@dataclass
class PD_Master_Obj:  # noqa: N801 - LightLLM's class name travels on the wire
    node_id: int
    host_ip_port: str

    __lightllm_name__ = (PD_IO_MODULE, "PD_Master_Obj")


class MultimodalParams:
    """LightLLM's multimodal payload; the control plane only carries it (empty for text)."""

    __lightllm_name__ = (MULTIMODAL_MODULE, "MultimodalParams")

    def __init__(self, images: list[Any] | None = None, audios: list[Any] | None = None) -> None:
        self.images = images if images is not None else []
        self.audios = audios if audios is not None else []

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MultimodalParams)
            and self.images == other.images
            and self.audios == other.audios
        )


@dataclass
class UpKVStatus:
    """The decode node's notice that a request's KV cache has arrived (JSON text frame)."""

    group_request_id: int
    dp_index: int
    pd_master_node_id: int
    type: str = field(default="kv_move_status")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "group_request_id": self.group_request_id,
            "dp_index": self.dp_index,
            "pd_master_node_id": self.pd_master_node_id,
        }

    @classmethod
    def from_json_dict(cls, data: Any) -> UpKVStatus:
        if not isinstance(data, dict) or data.get("type") != "kv_move_status":
            raise MalformedMessageError(
                "kv_move_status frame must be an object with type kv_move_status"
            )
        try:
            return cls(
                group_request_id=_as_int(data["group_request_id"], "group_request_id"),
                dp_index=_as_int(data["dp_index"], "dp_index"),
                pd_master_node_id=_as_int(data["pd_master_node_id"], "pd_master_node_id"),
            )
        except KeyError as exc:
            raise MalformedMessageError(f"kv_move_status frame lacks {exc.args[0]}") from None


@dataclass
class PDDecodeNodeInfo:
    """v1.2.0: where P must write a request's KV cache (D's transporter), relayed by the master.

    ``agent_metadata`` and ``page_reg_desc`` are pickles of D's transporter; they travel as
    bytes, never unpickled here.
    """

    decode_node_id: int
    pd_master_node_id: int
    agent_name: str
    agent_metadata: bytes
    num_pages: int
    page_reg_desc: bytes
    request_id: int
    ready_kv_len: int

    __lightllm_name__ = (PD_IO_MODULE, "PDDecodeNodeInfo")


@dataclass
class PDUpKVStatus:
    """v1.2.0's binary ``/kv_move_status`` frame: D has reserved KV slots for a request.

    ``pd_kv_trans_params`` is a pickled PDDecodeNodeInfo (``LightLLMCodec.decode_trans_params``).
    """

    group_request_id: int
    pd_master_node_id: int
    pd_kv_trans_params: bytes

    __lightllm_name__ = (PD_IO_MODULE, "PDUpKVStatus")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessageError(f"{name} must be an integer, got {value!r}")
    return value


def group_request_id(sub_request_id: int) -> int:
    return sub_request_id // MAX_BEST_OF * MAX_BEST_OF


TokenEntry = tuple[int, str, dict[str, Any], FinishStatus]
# The keys of a token's metadata (and of its logprobs' dicts) and of a node's load dict that
# nodes send (v1.1.0 to v1.2.0) and the master reads.
TOKEN_KEYS = (
    "id",
    "logprob",
    "cumlogprob",
    "special",
    "count_output_tokens",
    "prompt_cache_len",
    "mtp_accepted_token_num",
    "prompt_tokens",
    "prompt_ids",
    "logprobs",
    "rank",
    "decoded_token",
    "node_mode",
    "input_usage",
    "total_token_usage_rate",
    "client_ip_port",
)


# The fields of each plain wire class, in LightLLM's order, with the types they may hold.
OBJECT_FIELDS: dict[type, dict[str, tuple[type, ...]]] = {
    PD_Master_Obj: {"node_id": (int,), "host_ip_port": (str,)},
    MultimodalParams: {"images": (list,), "audios": (list,)},
    PDUpKVStatus: {
        "group_request_id": (int,),
        "pd_master_node_id": (int,),
        "pd_kv_trans_params": (bytes,),
    },
    PDDecodeNodeInfo: {
        "decode_node_id": (int,),
        "pd_master_node_id": (int,),
        "agent_name": (str,),
        "agent_metadata": (bytes,),
        "num_pages": (int,),
        "page_reg_desc": (bytes,),
        "request_id": (int,),
        "ready_kv_len": (int,),
    },
}
