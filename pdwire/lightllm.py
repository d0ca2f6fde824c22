"""LightLLM's PD wire objects: mirror classes, a byte-compatible encoder, a restricted decoder.

Pickles made here load into LightLLM's own classes (same module paths, same ctypes bytes),
and pickles made by LightLLM decode here into the mirrors, without importing LightLLM.
Decoding never runs code from the network: only the allowlisted globals resolve.
"""

from __future__ import annotations

import _ctypes
import base64
import binascii
import ctypes
import enum
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

from pdwire import fastpickle
from pdwire.errors import ForbiddenGlobalError, MalformedMessageError, WireError
from pdwire.structs import FinishStatus, Layout, SamplingParamsBase, layout_for, lightllm_name

PD_IO_MODULE = "lightllm.server.pd_io_struct"
MULTIMODAL_MODULE = "lightllm.server.multimodal_params"
PICKLE_PROTOCOL = 4
MAX_BEST_OF = 8


class ObjType(enum.Enum):
    ABORT = 1
    REQ = 2
    TOKEN_PACKS = 3


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


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessageError(f"{name} must be an integer, got {value!r}")
    return value


def group_request_id(sub_request_id: int) -> int:
    return sub_request_id // MAX_BEST_OF * MAX_BEST_OF


TokenEntry = tuple[int, str, dict[str, Any], FinishStatus]


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
    """Encoder and restricted decoder for one LightLLM version's PD messages."""

    def __init__(self, version: str = "v1.1.0", *, share_statuses: bool = False) -> None:
        """``share_statuses``: decode every FinishStatus of a value to one shared instance.

        Saves an object per token for a reader that never changes or re-encodes them (a
        re-encoded frame would hold memo references where LightLLM's has copies).
        """
        self.layout: Layout = layout_for(version)
        self.version = version
        self.token_packs_carry_load = version != "fc72ffa"
        self._classes: dict[tuple[str, str], Any] = {
            (PD_IO_MODULE, "ObjType"): ObjType,
            (PD_IO_MODULE, "PD_Master_Obj"): PD_Master_Obj,
            (MULTIMODAL_MODULE, "MultimodalParams"): MultimodalParams,
            lightllm_name(self.layout.SamplingParams): self.layout.SamplingParams,
            lightllm_name(FinishStatus): FinishStatus,
            ("_ctypes", "_unpickle"): self._restore_struct,
        }
        self._structs = {self.layout.SamplingParams, FinishStatus}
        self._share_statuses = share_statuses
        self._statuses: dict[bytes, FinishStatus] = {}  # raw bytes -> the shared instance
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
    def loads(self, data: bytes) -> Any:
        """Unpickle with only LightLLM's wire classes resolvable; raise WireError otherwise."""
        try:
            return _RestrictedUnpickler(io.BytesIO(data), self._classes).load()
        except WireError:
            raise
        except Exception as exc:  # any malformed pickle: truncated, bad opcode, wrong args
            raise MalformedMessageError(
                f"undecodable pickle: {type(exc).__name__}: {exc}"
            ) from None

    def decode_node_message(self, data: bytes) -> tuple[ObjType, Any, dict[str, Any] | None]:
        """A node's binary frame: (ObjType, payload, load report or None)."""
        msg = self.loads(data)
        if not isinstance(msg, tuple) or len(msg) not in (2, 3) or not isinstance(msg[0], ObjType):
            raise MalformedMessageError("frame is not a (ObjType, payload[, load]) tuple")
        load = msg[2] if len(msg) == 3 else None
        if load is not None and not isinstance(load, dict):
            raise MalformedMessageError("load report must be a dict")
        return msg[0], msg[1], load

    def decode_token_packs(self, payload: Any) -> list[TokenEntry]:
        if not isinstance(payload, list):
            raise MalformedMessageError("TOKEN_PACKS payload must be a list")
        for entry in payload:
            if (
                not isinstance(entry, tuple)
                or len(entry) != 4
                or not isinstance(entry[0], int)
                or not isinstance(entry[1], str)
                or not isinstance(entry[2], dict)
                or not isinstance(entry[3], FinishStatus)
            ):
                raise MalformedMessageError(
                    "TOKEN_PACKS entry must be (sub_req_id, text, metadata, FinishStatus)"
                )
        return payload

    def decode_req(
        self, payload: Any
    ) -> tuple[str | list[int], SamplingParamsBase, MultimodalParams]:
        if (
            not isinstance(payload, tuple)
            or len(payload) != 3
            or not isinstance(payload[0], str | list)
            or not isinstance(payload[1], self.layout.SamplingParams)
        ):
            raise MalformedMessageError(
                "REQ payload must be (prompt, SamplingParams, MultimodalParams)"
            )
        return payload

    def decode_pd_master_obj(self, data: bytes) -> PD_Master_Obj:
        obj = self.loads(data)
        if not isinstance(obj, PD_Master_Obj):
            raise MalformedMessageError("expected a pickled PD_Master_Obj")
        if not isinstance(obj.node_id, int) or not isinstance(obj.host_ip_port, str):
            raise MalformedMessageError("PD_Master_Obj needs an int node_id and a str host_ip_port")
        return obj

    def decode_registered_objects(self, data: bytes) -> dict[int, PD_Master_Obj]:
        objs = self.loads(data)
        if not isinstance(objs, dict) or not all(
            isinstance(k, int) and isinstance(v, PD_Master_Obj) for k, v in objs.items()
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

    def _restore_struct(self, cls: Any, state: Any) -> ctypes.Structure:
        if cls is FinishStatus and type(state) is tuple and len(state) == 2:
            shared = self._statuses.get(state[1]) if type(state[1]) is bytes else None
            if shared is not None:
                return shared
        if cls not in self._structs:
            raise ForbiddenGlobalError("_ctypes", f"_unpickle({cls!r})")
        if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], bytes)):
            raise MalformedMessageError(f"{cls.__name__} state must be (dict, bytes)")
        raw = state[1]
        expected = ctypes.sizeof(cls)
        if len(raw) != expected:
            raise MalformedMessageError(
                f"{cls.__name__} is {len(raw)} bytes but the LightLLM {self.version} layout has "
                f"{expected}: does the peer run another LightLLM version (--lightllm_version)?"
            )
        obj: ctypes.Structure = cls.from_buffer_copy(raw)
        if self._share_statuses and isinstance(obj, FinishStatus) and len(self._statuses) < 16:
            self._statuses[raw] = obj
        return obj


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, classes: dict[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self._allowed = classes

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(module, name) from None
