"""LightLLM's PD wire objects: mirror classes, a byte-compatible encoder, a safe decoder.

Pickles made here load into LightLLM's own classes (same module paths, same ctypes bytes),
and pickles made by LightLLM decode here into the mirrors, without importing LightLLM.
Each protocol version's messages are data (``MESSAGE_SETS``); decoding goes through
``pdwire.safepickle``, which runs no code, builds only fresh objects and bounds its work.
"""

from __future__ import annotations

import _ctypes
import base64
import binascii
import enum
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pdwire import fastpickle
from pdwire.errors import MalformedMessageError
from pdwire.fastdecode import TokenPacksDecoder, plain_entries
from pdwire.safepickle import Limits, ObjectSpec, SafeUnpickler, StructSpec, WireSchema
from pdwire.structs import FinishStatus, Layout, SamplingParamsBase, layout_for, lightllm_name

PD_IO_MODULE = "lightllm.server.pd_io_struct"
MULTIMODAL_MODULE = "lightllm.server.multimodal_params"
PICKLE_PROTOCOL = 4
MAX_BEST_OF = 8
# The largest frame of the protocol is a REQ to the decode node for the longest prompt (or
# the prefill node's prompt-id upload, or its first token carrying the prompt ids): up to 5
# bytes per token id (BININT) plus the 28 KiB SamplingParams, 5.3 MB for a 1M-token context
# (tests/pdwire/test_wire_fixtures.py builds it). A REQ to P carries the prompt's text, at
# most the master's 4 MiB body. 16 MiB, LightLLM v1.1.0's own websocket limit, leaves 3x.
MAX_FRAME_BYTES = 16 * 1024 * 1024


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

# The fields of each plain wire class, in LightLLM's order, with the types they may hold.
_OBJECT_FIELDS: dict[type, dict[str, tuple[type, ...]]] = {
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


class _MirrorPickler(pickle._Pickler):
    """The pure-Python pickler, writing LightLLM's module paths for our mirror classes.

    The C pickler insists that a class be importable under the name it is pickled as;
    this one writes exactly the opcodes the C pickler would write for LightLLM's classes.
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        wire_name = obj.__dict__.get("__lightllm_name__") if isinstance(obj, type) else None
        if wire_name is None:
            super().save_global(obj, name)  # type: ignore[misc]
            return
        module_name, qualname = wire_name
        pickler: Any = self  # the pure-Python pickler's helpers are not in typeshed
        pickler.save(module_name)
        pickler.save(qualname)
        pickler.write(pickle.STACK_GLOBAL)
        pickler.memoize(obj)


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _MirrorPickler(buffer, protocol=PICKLE_PROTOCOL).dump(obj)
    return buffer.getvalue()


class LightLLMCodec:
    """Encoder and safe decoder for one LightLLM version's PD messages."""

    def __init__(
        self,
        version: str = "v1.1.0",
        *,
        share_statuses: bool = False,
        limits: Limits | None = None,
        accelerated: bool = True,
    ) -> None:
        """``share_statuses``: decode every FinishStatus of a value to one shared instance.
        ``accelerated=False``: token packs take safepickle too (tests compare the two paths).

        Saves an object per token for a reader that never changes or re-encodes them (a
        re-encoded frame would hold memo references where LightLLM's has copies).
        """
        try:
            self.messages = MESSAGE_SETS[version]
        except KeyError:
            raise ValueError(
                f"unknown LightLLM version {version!r}; known: {', '.join(VERSIONS)}"
            ) from None
        self.layout: Layout = layout_for(version)
        self.version = version
        self.token_packs_carry_load = self.messages.token_packs_carry_load
        self._share_statuses = share_statuses
        self._statuses: dict[bytes, FinishStatus] = {}  # raw bytes -> the shared instance
        self._obj_types = {t.value: t for t in self.messages.obj_types}
        self._decoder = SafeUnpickler(self._schema(), limits)
        self._token_packs = TokenPacksDecoder(
            lightllm_name(ObjType),
            self._obj_types,
            lightllm_name(FinishStatus),
            self._statuses,  # filled only when sharing: else each entry gets a fresh one
            self._status_from_bytes,
            accelerated=accelerated,
        )
        self._fast_names: dict[Any, tuple[str, str]] = {
            ObjType: lightllm_name(ObjType),
            FinishStatus: lightllm_name(FinishStatus),
            self.layout.SamplingParams: lightllm_name(self.layout.SamplingParams),
            MultimodalParams: MultimodalParams.__lightllm_name__,
            _ctypes._unpickle: ("_ctypes", "_unpickle"),  # type: ignore[attr-defined]
        }
        self._req_pickler = fastpickle.ReqPickler(
            self._fast_names, ObjType.REQ, self.layout.SamplingParams, MultimodalParams
        )

    def _schema(self) -> WireSchema:
        params = self.layout.SamplingParams
        name = lightllm_name
        return WireSchema(
            enums={name(ObjType): self._obj_types},
            structs={
                name(params): StructSpec(params),
                name(FinishStatus): StructSpec(FinishStatus, self._check_status),
            },
            objects={
                name(cls): ObjectSpec(cls, _OBJECT_FIELDS[cls]) for cls in self.messages.objects
            },
        )

    def _status_from_bytes(self, raw: bytes) -> FinishStatus:
        shared = self._statuses.get(raw)
        if shared is not None:
            return shared
        return self._check_status(FinishStatus.from_buffer_copy(raw))

    def _check_status(self, status: FinishStatus) -> FinishStatus:
        value = status.status
        if value not in self.messages.finish_statuses:
            raise MalformedMessageError(
                f"FinishStatus {value} is not one of LightLLM {self.version}'s "
                f"{sorted(self.messages.finish_statuses)}"
            )
        if self._share_statuses:
            return self._statuses.setdefault(bytes(status), status)
        return status

    # -- encoding ---------------------------------------------------------------------------
    def encode_req(
        self,
        prompt: str | list[int],
        params: SamplingParamsBase,
        multimodal: MultimodalParams | None = None,
    ) -> bytes:
        fast = self._req_pickler.dumps(prompt, params, multimodal)
        if fast is not None:
            return fast
        return self._dumps((ObjType.REQ, (prompt, params, multimodal or MultimodalParams())))

    def encode_abort(self, group_request_id: int) -> bytes:
        return self._dumps((ObjType.ABORT, group_request_id))

    def encode_heartbeat(self) -> bytes:
        """v1.2.0: ``(HEARTBEAT,)``, every 15 s from each node."""
        return self._dumps((ObjType.HEARTBEAT,))

    def encode_prompt_ids(self, group_request_id: int, prompt_ids: list[int]) -> bytes:
        """v1.2.0, P -> master: the tokenized prompt, before any compute."""
        return self._dumps((ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS, group_request_id, prompt_ids))

    def encode_decode_node_info(self, group_request_id: int, info: PDDecodeNodeInfo) -> bytes:
        """v1.2.0, master -> P: D's transporter, re-pickled, its bytes fields as D sent them."""
        return dumps((ObjType.PD_REQ_DECODE_NODE_INFO, group_request_id, info))

    @staticmethod
    def encode_kv_status(status: PDUpKVStatus) -> bytes:
        """v1.2.0, D -> master on ``/kv_move_status``."""
        return dumps(status)

    @staticmethod
    def encode_trans_params(info: PDDecodeNodeInfo) -> bytes:
        """The ``pd_kv_trans_params`` bytes of a PDUpKVStatus."""
        return dumps(info)

    def encode_token_packs(self, entries: list[TokenEntry], load: dict[str, Any] | None) -> bytes:
        if self.token_packs_carry_load:
            return self._dumps((ObjType.TOKEN_PACKS, entries, load or {}))
        return self._dumps((ObjType.TOKEN_PACKS, entries))

    def _dumps(self, message: Any) -> bytes:
        """The fast pickler where it applies (same bytes), else the general one."""
        return fastpickle.dumps(message, self._fast_names) or dumps(message)

    @staticmethod
    def encode_pd_master_obj(obj: PD_Master_Obj) -> bytes:
        return dumps(obj)

    @staticmethod
    def encode_registered_objects(objs: dict[int, PD_Master_Obj]) -> bytes:
        return dumps(objs)

    # -- decoding ---------------------------------------------------------------------------
    @property
    def token_packs_accelerated(self) -> bool:
        """Whether TOKEN_PACKS frames take the compiled decoder (else safepickle, slower)."""
        return self._token_packs.available

    def loads(self, data: bytes) -> Any:
        """Decode one of this version's messages; raise WireError for anything else."""
        return self._decoder.loads(data)

    def decode_node_message(self, data: bytes) -> tuple[ObjType, Any, Any]:
        """A binary ``/pd_register`` frame: (ObjType, payload, extra).

        ``(ABORT, gid)``, ``(REQ, payload)``: payload, None. ``(TOKEN_PACKS, entries[, load])``:
        entries, the load dict (None without one). ``(HEARTBEAT,)``: None, None. The v1.2.0
        3-tuples ``(PD_UPLOAD_PREFILL_PROMPT_IDS, gid, ids)`` and
        ``(PD_REQ_DECODE_NODE_INFO, gid, info)``: gid, then ids or info, both checked.
        """
        fast = self._token_packs.decode(data)  # the per-token path; None: not covered
        if fast is not None and fast[0] is ObjType.TOKEN_PACKS:
            length = 2 if fast[2] is None else 3
            if length in self.messages.tuple_lengths[ObjType.TOKEN_PACKS]:
                return fast
        msg = self.loads(data)
        if type(msg) is not tuple or not msg or type(msg[0]) is not ObjType:
            raise MalformedMessageError("frame is not a (ObjType, ...) tuple")
        kind = msg[0]
        if len(msg) not in self.messages.tuple_lengths[kind]:
            raise MalformedMessageError(
                f"a {kind.name} frame of {len(msg)} items; LightLLM {self.version} sends "
                f"{' or '.join(map(str, self.messages.tuple_lengths[kind]))}"
            )
        if kind is ObjType.TOKEN_PACKS:
            load = msg[2] if len(msg) == 3 else None
            if load is not None and type(load) is not dict:
                raise MalformedMessageError("load report must be a dict")
            return kind, self.decode_token_packs(msg[1]), load
        if kind is ObjType.HEARTBEAT:
            return kind, None, None
        if kind is ObjType.PD_UPLOAD_PREFILL_PROMPT_IDS:
            ids = msg[2]
            if type(ids) is not list or not all(type(i) is int for i in ids):
                raise MalformedMessageError("prompt ids must be a list of ints")
            return kind, _group_id(msg[1]), ids
        if kind is ObjType.PD_REQ_DECODE_NODE_INFO:
            if type(msg[2]) is not PDDecodeNodeInfo:
                raise MalformedMessageError("PD_REQ_DECODE_NODE_INFO must carry a PDDecodeNodeInfo")
            return kind, _group_id(msg[1]), msg[2]
        if kind is ObjType.ABORT:
            return kind, _group_id(msg[1]), None
        return kind, msg[1], None

    def decode_token_packs(self, payload: Any) -> list[TokenEntry]:
        """Check a TOKEN_PACKS payload (``decode_node_message`` already has)."""
        if type(payload) is not list or not all(
            type(entry) is tuple
            and len(entry) == 4
            and type(entry[0]) is int
            and type(entry[2]) is dict
            and type(entry[3]) is FinishStatus
            for entry in payload
        ):
            raise MalformedMessageError(
                "TOKEN_PACKS entry must be (sub_req_id, text, metadata, FinishStatus)"
            )
        if not plain_entries(payload, None):
            raise MalformedMessageError(
                "TOKEN_PACKS text must be str and metadata plain data, str or int keys, "
                "nested at most 3 deep"
            )
        return payload

    def decode_req(
        self, payload: Any
    ) -> tuple[str | list[int], SamplingParamsBase, MultimodalParams]:
        if (
            not isinstance(payload, tuple)
            or len(payload) != 3
            or not isinstance(payload[0], str | list)
            or type(payload[1]) is not self.layout.SamplingParams
            or type(payload[2]) is not MultimodalParams
            or type(payload[0]) is list
            and not all(type(i) is int for i in payload[0])
        ):
            raise MalformedMessageError(
                "REQ payload must be (prompt, SamplingParams, MultimodalParams)"
            )
        return payload

    def decode_pd_master_obj(self, data: bytes) -> PD_Master_Obj:
        obj = self.loads(data)
        if type(obj) is not PD_Master_Obj:
            raise MalformedMessageError("expected a pickled PD_Master_Obj")
        return obj

    def decode_kv_status(self, data: bytes) -> PDUpKVStatus:
        """v1.2.0's binary ``/kv_move_status`` frame."""
        if not self.messages.kv_status_pickled:
            raise MalformedMessageError(
                f"LightLLM {self.version} sends kv_move_status as JSON text, not binary"
            )
        status = self.loads(data)
        if type(status) is not PDUpKVStatus:
            raise MalformedMessageError("expected a pickled PDUpKVStatus")
        return status

    def decode_trans_params(self, status: PDUpKVStatus) -> PDDecodeNodeInfo:
        """The PDDecodeNodeInfo pickled in a PDUpKVStatus (its own bytes fields stay opaque)."""
        info = self.loads(status.pd_kv_trans_params)
        if type(info) is not PDDecodeNodeInfo:
            raise MalformedMessageError("pd_kv_trans_params must be a pickled PDDecodeNodeInfo")
        return info

    def decode_registered_objects(self, data: bytes) -> dict[int, PD_Master_Obj]:
        objs = self.loads(data)
        if type(objs) is not dict or not all(
            type(k) is int and type(v) is PD_Master_Obj for k, v in objs.items()
        ):
            raise MalformedMessageError("expected a pickled dict of node_id -> PD_Master_Obj")
        return objs

    def decode_registered_objects_answer(self, answer: Any) -> dict[int, PD_Master_Obj]:
        """``GET /registered_objects``'s JSON: ``{"data": base64 of the pickled dict}``."""
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, str):
            raise MalformedMessageError('expected {"data": "<base64 pickle>"}')
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise MalformedMessageError(f"data is not base64: {exc}") from None
        return self.decode_registered_objects(raw)


def _group_id(value: Any) -> int:
    if type(value) is not int:
        raise MalformedMessageError(f"group request id must be an int, got {type(value).__name__}")
    return value
