"""A small, fast pickler for the PD messages sent per request and per token (REQ, TOKEN_PACKS).

It writes the bytes the standard pickler writes (protocol 4, one frame, the same memo
references) for the types those messages hold: None, bool, int, float, str, bytes, list,
tuple, dict, and the classes named in ``names`` (ctypes structs such as SamplingParams and
FinishStatus, the ObjType enum, plain objects such as MultimodalParams). For anything
else, or a message larger than one 64 KiB frame, ``dumps`` returns None and the caller
uses the general pickler. Tests compare both on random messages.
"""

from __future__ import annotations

import _ctypes
import ctypes
import enum
import pickle
import struct
from operator import countOf
from typing import Any

_FRAME_SIZE_TARGET = 64 * 1024
_U64 = struct.Struct("<Q").pack
_F64 = struct.Struct(">d").pack
_U32 = struct.Struct("<I").pack
_I32 = struct.Struct("<i").pack
_U16 = struct.Struct("<H").pack
_BATCH = 1000
_CTYPES_UNPICKLE = _ctypes._unpickle  # type: ignore[attr-defined]


class _Unsupported(Exception):
    pass


class _Writer:
    __slots__ = ("out", "memo", "names")

    def __init__(self, names: dict[Any, tuple[str, str]]) -> None:
        self.out = bytearray()
        self.memo: dict[int, tuple[int, Any]] = {}  # keeps objects alive, as pickle does
        self.names = names

    def memoize(self, obj: Any) -> None:
        self.memo[id(obj)] = (len(self.memo), obj)
        self.out += b"\x94"

    def save(self, obj: Any) -> None:  # noqa: C901 - one branch per type, as in pickle
        out = self.out
        hit = self.memo.get(id(obj))
        if hit is not None:
            index = hit[0]
            out += b"h" + bytes((index,)) if index < 256 else b"j" + _U32(index)
            return
        kind = type(obj)
        if kind is str:
            raw = obj.encode("utf-8", "surrogatepass")
            n = len(raw)
            out += (b"\x8c" + bytes((n,)) if n < 256 else b"X" + _U32(n)) + raw
            self.memoize(obj)
        elif kind is int:
            if 0 <= obj <= 0xFF:
                out += b"K" + bytes((obj,))
            elif 0 <= obj <= 0xFFFF:
                out += b"M" + _U16(obj)
            elif -0x80000000 <= obj <= 0x7FFFFFFF:
                out += b"J" + _I32(obj)
            else:
                raw = _encode_long(obj)
                if len(raw) >= 256:
                    raise _Unsupported
                out += b"\x8a" + bytes((len(raw),)) + raw
        elif kind is float:
            out += b"G" + _F64(obj)
        elif obj is None:
            out += b"N"
        elif kind is bool:
            out += b"\x88" if obj else b"\x89"
        elif kind is dict:
            out += b"}"
            self.memoize(obj)
            self._batched(list(obj.items()), b"s", b"u", pairs=True)
        elif kind is list:
            out += b"]"
            self.memoize(obj)
            self._batched(obj, b"a", b"e", pairs=False)
        elif kind is tuple:
            self._tuple(obj)
        elif kind is bytes:
            n = len(obj)
            out += (b"C" + bytes((n,)) if n < 256 else b"B" + _U32(n)) + obj
            self.memoize(obj)
        elif kind not in self.names:
            raise _Unsupported
        elif isinstance(obj, ctypes.Structure):
            self._reduce(obj, _CTYPES_UNPICKLE, (kind, (obj.__dict__, bytes(obj))))
        elif isinstance(obj, enum.Enum):
            self._reduce(obj, kind, (obj._value_,))
        else:  # a plain object: copyreg.__newobj__(cls) then its __dict__
            self.save_global(kind)
            out += b")\x81"
            self.memoize(obj)
            self.save(obj.__dict__)
            out += b"b"

    def _reduce(self, obj: Any, func: Any, args: tuple[Any, ...]) -> None:
        self.save_global(func)
        self._tuple(args)
        self.out += b"R"
        self.memoize(obj)

    def _tuple(self, obj: tuple[Any, ...]) -> None:
        n = len(obj)
        if n == 0:
            self.out += b")"
            return
        if n > 3:
            self.out += b"("
        for item in obj:
            if isinstance(item, type):
                self.save_global(item)
            else:
                self.save(item)
        self.out += b"t" if n > 3 else b"\x85\x86\x87"[n - 1 : n]
        self.memoize(obj)

    def _batched(self, items: list[Any], one: bytes, many: bytes, pairs: bool) -> None:
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            if len(batch) > 1:
                self.out += b"("
            for item in batch:
                if pairs:
                    self.save(item[0])
                    self.save(item[1])
                else:
                    self.save(item)
            self.out += many if len(batch) > 1 else one

    def save_global(self, obj: Any) -> None:
        hit = self.memo.get(id(obj))
        if hit is not None:
            index = hit[0]
            self.out += b"h" + bytes((index,)) if index < 256 else b"j" + _U32(index)
            return
        module, name = self.names[obj]
        self.save(module)
        self.save(name)
        self.out += b"\x93"
        self.memoize(obj)


def _encode_long(x: int) -> bytes:
    """pickle.encode_long: little-endian two's complement, shortest form."""
    nbytes = (x.bit_length() >> 3) + 1
    raw = x.to_bytes(nbytes, byteorder="little", signed=True)
    if x < 0 and nbytes > 1 and raw[-1] == 0xFF and (raw[-2] & 0x80) != 0:
        raw = raw[:-1]
    return raw


def dumps(obj: Any, names: dict[Any, tuple[str, str]]) -> bytes | None:
    """Protocol-4 pickle of ``obj`` as pickle would write it, or None if out of scope.

    ``names`` maps each class or function to pickle by reference to its (module, name).
    """
    writer = _Writer(names)
    try:
        writer.save(obj)
    except (_Unsupported, KeyError):
        return None
    writer.out += b"."
    body = writer.out
    if len(body) >= _FRAME_SIZE_TARGET:
        return None  # pickle would split frames here; leave that to it
    return b"\x80\x04\x95" + _U64(len(body)) + bytes(body)


class ReqPickler:
    """REQ messages (two per request) as constant byte runs around the prompt and struct.

    ``(ObjType.REQ, (prompt, SamplingParams, MultimodalParams()))`` comes out as ``dumps``
    writes it (such a message shares no object, so it has no memo references, and MEMOIZE
    carries no index) in a fraction of the time. ``dumps`` here returns None for what it
    does not cover: a struct with instance attributes, multimodal data, more than one frame.
    """

    def __init__(
        self, names: dict[Any, tuple[str, str]], req: enum.Enum, params: type, multimodal: type
    ) -> None:
        kind = type(req)
        self._params = params
        self._head = global_reference(*names[kind]) + _saved(req._value_) + b"\x85\x94R\x94"
        self._params_head = (
            global_reference(*names[_CTYPES_UNPICKLE]) + global_reference(*names[params]) + b"}\x94"
        )
        self._tail = (
            b"\x94\x86\x94\x86\x94R\x94"  # the struct's bytes, (dict, bytes), (cls, state), R
            + global_reference(*names[multimodal])
            + b")\x81\x94}\x94("
            + _saved("images")
            + b"]\x94"
            + _saved("audios")
            + b"]\x94ub\x87\x94\x86\x94."
        )
        self._frame = b"\x80\x04\x95"  # PROTO 4, FRAME (its length follows)
        self._fixed = len(self._head) + len(self._params_head) + 5 + len(self._tail)
        # the frame's bytes before the struct's, but the prompt's
        self._around_prompt = len(self._frame) + 8 + len(self._head) + len(self._params_head) + 5

    def dumps(
        self, prompt: str | list[int], params: ctypes.Structure, multimodal: Any
    ) -> bytes | None:
        parts = self._parts(prompt, params, multimodal)
        # one copy of the ~20 KB struct, straight from its buffer into the message
        return None if parts is None else b"".join(parts)

    def frame(
        self, prompt: str | list[int], params: ctypes.Structure
    ) -> tuple[bytearray, int] | None:
        """``dumps(prompt, params, None)`` as a bytearray, and the offset of the struct's bytes
        in it: a field set in place there is the message ``dumps`` writes for a copy of
        ``params`` with that field set (the struct's bytes are all that holds its fields), and
        the ~20 KB struct is copied once, into the message, rather than into a copy first."""
        parts = self._parts(prompt, params, None)
        if parts is None:
            return None
        return bytearray().join(parts), self._around_prompt + len(parts[3])

    def _parts(
        self, prompt: str | list[int], params: ctypes.Structure, multimodal: Any
    ) -> tuple[Any, ...] | None:
        """The message's pieces, the struct last but one; None where ``dumps`` is."""
        if type(params) is not self._params or params.__dict__:
            return None
        if multimodal is not None and (multimodal.images or multimodal.audios):
            return None
        if type(prompt) is str:
            text = prompt.encode("utf-8", "surrogatepass")
            n = len(text)
            head = (b"\x8c" + bytes((n,)) if n < 256 else b"X" + _U32(n)) + text + b"\x94"
        elif (
            type(prompt) is list
            and len(prompt) % _BATCH != 1
            and countOf(map(type, prompt), int) == len(prompt)  # a quarter faster than a set
        ):
            # Token ids at C speed. (Its one difference: a last batch of one item, which C
            # pickle writes as MARK item APPENDS, the Python pickler as item APPEND.)
            raw = pickle.dumps(prompt, protocol=4)
            if raw[2:3] != b"\x95" or _U64(len(raw) - 11) != raw[3:11]:
                return None  # more than one frame
            head = raw[11:-1]
        else:
            return None
        size = ctypes.sizeof(params)
        length = self._fixed + len(head) + size
        if length >= _FRAME_SIZE_TARGET:
            return None
        return (
            self._frame,
            _U64(length),
            self._head,
            head,
            self._params_head,
            b"B",
            _U32(size),
            params,
            self._tail,
        )


def _saved(obj: Any) -> bytes:
    """What ``_Writer`` writes for ``obj`` first in a message (no memo references)."""
    writer = _Writer({})
    writer.save(obj)
    return bytes(writer.out)


def global_reference(module: str, name: str) -> bytes:
    """What pickle writes the first time a message refers to ``module.name``."""
    return _saved(module) + _saved(name) + b"\x93\x94"
