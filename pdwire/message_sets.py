"""What each LightLLM version puts on the wire, as data (``MESSAGE_SETS``), how a node's
version shows in its registration, and the largest frame any of them sends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdwire.errors import MalformedMessageError
from pdwire.pd_io import MultimodalParams, ObjType, PD_Master_Obj, PDDecodeNodeInfo, PDUpKVStatus

# The largest frame of the protocol is a REQ to the decode node for the longest prompt (or
# the prefill node's prompt-id upload, or its first token carrying the prompt ids): up to 5
# bytes per token id (BININT) plus the 28 KiB SamplingParams, 5.3 MB for a 1M-token context
# (tests/pdwire/test_wire_fixtures.py builds it). A REQ to P carries the prompt's text, at
# most the master's 4 MiB body. 16 MiB, LightLLM v1.1.0's own websocket limit, leaves 3x.
MAX_FRAME_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class MessageSet:
    """What one LightLLM version puts on the wire, as data for the codec and its decoder."""

    version: str
    obj_types: frozenset[ObjType]
    finish_statuses: frozenset[int]
    token_packs_carry_load: bool  # (TOKEN_PACKS, entries, load) rather than a 2-tuple
    kv_status_pickled: bool  # /kv_move_status: pickled PDUpKVStatus, else JSON UpKVStatus
    objects: tuple[type, ...]  # plain wire classes (NEWOBJ + BUILD)
    tuple_lengths: Mapping[ObjType, tuple[int, ...]]  # node frames: len of each kind's tuple


_V11_KINDS = {ObjType.ABORT: (2,), ObjType.REQ: (2,), ObjType.TOKEN_PACKS: (3,)}
MESSAGE_SETS: dict[str, MessageSet] = {
    "v1.1.0": MessageSet(
        "v1.1.0",
        frozenset(_V11_KINDS),
        frozenset({0, 1, 2}),
        token_packs_carry_load=True,
        kv_status_pickled=False,
        objects=(PD_Master_Obj, MultimodalParams),
        tuple_lengths=_V11_KINDS,
    ),
    "fc72ffa": MessageSet(
        "fc72ffa",
        frozenset(_V11_KINDS),
        frozenset({0, 1, 2}),
        token_packs_carry_load=False,
        kv_status_pickled=False,
        objects=(PD_Master_Obj, MultimodalParams),
        tuple_lengths={**_V11_KINDS, ObjType.TOKEN_PACKS: (2,)},
    ),
    "v1.2.0": MessageSet(
        "v1.2.0",
        frozenset(ObjType),
        frozenset({0, 1, 2, 3, 4}),
        token_packs_carry_load=True,
        kv_status_pickled=True,
        objects=(PD_Master_Obj, MultimodalParams, PDUpKVStatus, PDDecodeNodeInfo),
        tuple_lengths={
            **_V11_KINDS,
            ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS: (3,),
            ObjType.PD_REQ_DECODE_NODE_INFO: (3,),
            ObjType.HEARTBEAT: (1,),
        },
    ),
}
VERSIONS = tuple(MESSAGE_SETS)


def detect_version(registration: Any) -> str | None:
    """A node's LightLLM version from its ``/pd_register`` registration frame, or None.

    v1.2.0 dropped ``start_args.pd_decode_rpyc_port`` and added ``pd_trans_mode`` (its KV
    transporter). v1.1.0 and fc72ffa speak the same frames and differ in arguments only
    fc72ffa has (``cache_reserved_ratio``) or only v1.1.0 has (``select_p_d_node_strategy``,
    ``dp_balancer``, ...); None when the arguments show neither (the caller's default).
    """
    args = registration.get("start_args") if isinstance(registration, dict) else None
    if not isinstance(args, dict):
        raise MalformedMessageError("registration has no start_args object")
    if "pd_decode_rpyc_port" not in args:
        if "pd_trans_mode" in args:
            return "v1.2.0"
        raise MalformedMessageError(
            "start_args has neither pd_decode_rpyc_port (v1.1.0, fc72ffa) "
            "nor pd_trans_mode (v1.2.0)"
        )
    if "cache_reserved_ratio" in args:
        return "fc72ffa"
    if "select_p_d_node_strategy" in args or "dp_balancer" in args:
        return "v1.1.0"
    return None
