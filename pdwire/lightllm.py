"""LightLLM's PD messages: a byte-compatible encoder and a safe decoder, one codec per version.

Each version's messages are data (``pdwire.message_sets``) over the mirror classes of
``pdwire.pd_io``; encoding goes through ``pdwire.fastpickle`` (token packs:
``pdwire.nativepickle``) where it applies, else ``pdwire.mirrorpickle``; decoding goes
through ``pdwire.safepickle``, which runs no code, builds only fresh objects and bounds its
work (token packs: ``pdwire.fastdecode``).
"""

from __future__ import annotations

import _ctypes
import base64
import binascii
from collections.abc import Callable
from typing import Any

from pdwire import fastpickle
from pdwire.errors import MalformedMessageError
from pdwire.fastdecode import TokenPacksDecoder, plain_entries
from pdwire.message_sets import MESSAGE_SETS, VERSIONS
from pdwire.mirrorpickle import dumps
from pdwire.nativepickle import NativeNamed
from pdwire.pd_io import (
    OBJECT_FIELDS,
    TOKEN_KEYS,
    MultimodalParams,
    ObjType,
    PD_Master_Obj,
    PDDecodeNodeInfo,
    PDUpKVStatus,
    TokenEntry,
)
from pdwire.safepickle import Limits, ObjectSpec, SafeUnpickler, StructSpec, WireSchema
from pdwire.structs import FinishStatus, Layout, SamplingParamsBase, layout_for, lightllm_name


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
        limits = limits or Limits()
        self._decoder = SafeUnpickler(self._schema(), limits)
        self._token_packs = TokenPacksDecoder(
            lightllm_name(ObjType),
            ObjType.TOKEN_PACKS,
            self.messages.tuple_lengths[ObjType.TOKEN_PACKS],
            lightllm_name(FinishStatus),
            self._statuses,  # filled only when sharing: else each entry gets a fresh one
            self._status_from_bytes,
            limits,
            slow=self._decode_node_message,
            keys=TOKEN_KEYS,
            accelerated=accelerated,
        )
        self.decode_node_message: Callable[[bytes], tuple[ObjType, Any, Any]] = (
            self._token_packs.decode_or_slow
        )
        """A binary ``/pd_register`` frame: (ObjType, payload, extra), as
        ``_decode_node_message`` says; a token pack in one call of the compiled decoder."""
        self._fast_names: dict[Any, tuple[str, str]] = {
            ObjType: lightllm_name(ObjType),
            FinishStatus: lightllm_name(FinishStatus),
            self.layout.SamplingParams: lightllm_name(self.layout.SamplingParams),
            MultimodalParams: MultimodalParams.__lightllm_name__,
            _ctypes._unpickle: ("_ctypes", "_unpickle"),  # type: ignore[attr-defined]
        }
        self._native = NativeNamed(
            {k: self._fast_names[k] for k in (ObjType, FinishStatus, _ctypes._unpickle)}  # type: ignore[attr-defined]
        )
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
                name(cls): ObjectSpec(cls, OBJECT_FIELDS[cls]) for cls in self.messages.objects
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

    def req_frame(
        self, prompt: str | list[int], params: SamplingParamsBase
    ) -> tuple[bytearray, SamplingParamsBase] | None:
        """``encode_req(prompt, params)`` as a bytearray, with a struct over the frame's copy
        of ``params``: a field set on it makes the frame ``encode_req`` writes for a copy of
        ``params`` with that field set. None where ``encode_req`` takes the general pickler."""
        built = self._req_pickler.frame(prompt, params)
        if built is None:
            return None
        frame, offset = built
        return frame, type(params).from_buffer(frame, offset)

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
        message = (
            (ObjType.TOKEN_PACKS, entries, load or {})
            if self.token_packs_carry_load
            else (ObjType.TOKEN_PACKS, entries)
        )
        return self._native.token_packs(message) or self._dumps(message)

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

    def _decode_node_message(self, data: bytes) -> tuple[ObjType, Any, Any]:
        """A binary ``/pd_register`` frame: (ObjType, payload, extra), decoded by safepickle
        (``decode_node_message`` first tries the compiled decoder of token packs).

        ``(ABORT, gid)``, ``(REQ, payload)``: payload, None. ``(TOKEN_PACKS, entries[, load])``:
        entries, the load dict (None without one). ``(HEARTBEAT,)``: None, None. The v1.2.0
        3-tuples ``(PD_UPLOAD_PREFILL_PROMPT_IDS, gid, ids)`` and
        ``(PD_REQ_DECODE_NODE_INFO, gid, info)``: gid, then ids or info, both checked.
        """
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
