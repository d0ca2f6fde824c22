"""A decoder for LightLLM's pickled PD messages that runs no code and bounds its work.

It reads the opcode stream itself and accepts exactly what LightLLM's pickler (protocol 4)
and ours write for these messages: None, bool, int (at most ``max_int_bytes``), float, str,
bytes, list, tuple, dict with str or int keys, and the wire classes of one protocol
version, each in the one shape it is pickled in:

- an enum (ObjType): ``cls (int,) REDUCE``, mapped by the decoder to its member;
- a ctypes struct (SamplingParams, FinishStatus): ``_ctypes._unpickle (cls, ({}, bytes))``
  REDUCE, a fresh struct from bytes of exactly its size, checked by the struct's own rule;
- a plain object (PD_Master_Obj, PDUpKVStatus, ...): ``cls () NEWOBJ state BUILD``, built
  fresh from a dict of exactly its fields, each of its declared type.

Everything else is refused before it is paid for: other opcodes (no BINPUT: the memo
grows by one entry per MEMOIZE), BUILD/APPEND/SETITEM on anything but a list, dict or
object this decoder has just made, classes or functions as values, a second reference
to a container (only strings, bytes, numbers and classes are shared through the memo,
as LightLLM's pickles do), dict keys other than str and int (so hashing costs the key's
length), more than ``max_objects`` values, nesting past ``max_depth``, dicts past
``max_dict_items``. A refused frame raises a WireError and changes no state.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pdwire.errors import ForbiddenGlobalError, FrameLimitError, MalformedMessageError

UNPICKLE = ("_ctypes", "_unpickle")

_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U16 = struct.Struct("<H").unpack_from
_F64 = struct.Struct(">d").unpack_from
_SHARED = frozenset({str, bytes, int, float})  # what a BINGET may push again
_CONTAINERS = frozenset({list, dict, tuple})
_KEYS = frozenset({str, int})  # hashing them costs their length, and they cannot collide at will
_OPAQUE = object()  # memo slot of a value no BINGET may reach (args tuples, objects)
CONTAINER_WEIGHT = 7  # an empty dict or list is ~8 pointers: counted as 8 values


@dataclass(frozen=True)
class Limits:
    """What one frame may cost the decoder."""

    max_objects: int = 1 << 21  # opcodes, containers weighing 8: a 1M-token prompt's ids fit
    max_memo: int = 1 << 20  # MEMOIZE entries (LightLLM memoizes each str, dict, tuple)
    max_depth: int = 32  # LightLLM's token packs nest 6 deep
    max_dict_items: int = 1024  # per dict: bounds the cost of int keys with equal hashes
    max_int_bytes: int = 17  # LONG1 payload: signed 128-bit node ids need 17


@dataclass(frozen=True)
class ObjectSpec:
    """A plain wire class: its fields in pickled order, each with the types it may hold."""

    cls: type
    fields: Mapping[str, tuple[type, ...]]


@dataclass(frozen=True)
class StructSpec:
    """A ctypes wire struct and a check of a fresh instance (raise WireError to refuse)."""

    cls: type[ctypes.Structure]
    check: Callable[[Any], Any] | None = None  # returns the instance to use


@dataclass(frozen=True)
class WireSchema:
    """The classes one protocol version's messages may name, by (module, qualname)."""

    enums: Mapping[tuple[str, str], Mapping[int, enum.Enum]]
    structs: Mapping[tuple[str, str], StructSpec]
    objects: Mapping[tuple[str, str], ObjectSpec]


class _Global:
    """A resolved class reference; never a value, only the head of its pattern."""

    __slots__ = ("kind", "name", "members", "struct", "spec")

    def __init__(self, kind: int, name: tuple[str, str]) -> None:
        self.kind = kind
        self.name = name
        self.members: Mapping[int, enum.Enum] = {}
        self.struct: StructSpec | None = None
        self.spec: ObjectSpec | None = None


_ENUM, _UNPICKLE, _STRUCT, _OBJECT = range(4)


class SafeUnpickler:
    """Decodes one version's messages; holds no per-frame state, so one serves a process."""

    def __init__(self, schema: WireSchema, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._globals: dict[tuple[str, str], _Global] = {UNPICKLE: _Global(_UNPICKLE, UNPICKLE)}
        for name, members in schema.enums.items():
            g = self._globals[name] = _Global(_ENUM, name)
            g.members = dict(members)
        for name, spec in schema.structs.items():
            g = self._globals[name] = _Global(_STRUCT, name)
            g.struct = spec
        for name, ospec in schema.objects.items():
            g = self._globals[name] = _Global(_OBJECT, name)
            g.spec = ospec

    def loads(self, data: bytes) -> Any:
        if len(data) < 3 or data[0] != 0x80 or not 2 <= data[1] <= 5:
            raise MalformedMessageError("not a pickle (protocol 2-5)")
        try:
            value, pos, _ = self._run(data, 2, [], 0, {}, False)
        except (IndexError, struct.error, UnicodeDecodeError) as exc:
            raise MalformedMessageError(f"truncated or malformed pickle: {exc}") from None
        if pos != len(data):
            raise MalformedMessageError("bytes after the pickle's STOP")
        return value

    def _run(  # noqa: C901 - one branch per opcode, hottest first
        self,
        data: bytes,
        pos: int,
        memo: list[Any],
        count: int,
        depths: dict[int, int],
        nested: bool,
    ) -> tuple[Any, int, int]:
        """Run opcodes until STOP (or, ``nested``, until the BUILD of an object's state)."""
        stack: list[Any] = []
        marks: list[int] = []
        push = stack.append
        remember = memo.append
        limits = self.limits
        max_objects = limits.max_objects
        max_memo = limits.max_memo
        size = len(data)
        while True:
            op = data[pos]
            pos += 1
            count += 1  # every opcode pushes at most one value (or mark) and allocates it
            if count > max_objects:
                raise FrameLimitError(f"more than {max_objects} values in one frame")
            if op == 0x94:  # MEMOIZE
                remember(stack[-1])
                if len(memo) > max_memo:
                    raise FrameLimitError(f"more than {max_memo} memo entries in one frame")
            elif op == 0x68:  # BINGET
                obj = memo[data[pos]]
                pos += 1
                if type(obj) in _SHARED:
                    push(obj)
                else:
                    value, pos, count = self._shared(obj, data, pos, memo, count, depths, nested)
                    push(value)
            elif op == 0x4B:  # BININT1
                push(data[pos])
                pos += 1
            elif op == 0x8C:  # SHORT_BINUNICODE, most often followed by its MEMOIZE
                end = pos + 1 + data[pos]
                if end >= size:
                    raise IndexError("string past the end")
                text = data[pos + 1 : end].decode("utf-8", "surrogatepass")
                push(text)
                if data[end] == 0x94:
                    remember(text)
                    end += 1
                    if len(memo) > max_memo:
                        raise FrameLimitError(f"more than {max_memo} memo entries in one frame")
                pos = end
            elif op == 0x28:  # MARK
                marks.append(len(stack))
            elif op == 0x7D or op == 0x5D:  # EMPTY_DICT, EMPTY_LIST
                push({} if op == 0x7D else [])
                count += CONTAINER_WEIGHT
            elif op == 0x47:  # BINFLOAT
                push(_F64(data, pos)[0])
                pos += 8
            elif op == 0x75 or op == 0x73:  # SETITEMS, SETITEM
                start = marks.pop() if op == 0x75 else len(stack) - 2
                if start < 1:
                    raise IndexError("SETITEM(S) without a dict")
                items = stack[start:]
                del stack[start:]
                target = stack[-1]
                if type(target) is not dict or len(items) % 2:
                    raise MalformedMessageError("SETITEM(S) on something not a fresh dict")
                keys = items[0::2]
                values = items[1::2]
                if not _KEYS.issuperset(map(type, keys)):
                    raise MalformedMessageError("a dict key that is not a str or an int")
                if not _CONTAINERS.isdisjoint(map(type, values)):
                    _nest(target, values, depths, limits.max_depth)
                target.update(zip(keys, values, strict=True))
                if len(target) > limits.max_dict_items:
                    raise FrameLimitError(f"a dict has more than {limits.max_dict_items} items")
            elif op == 0x86 or op == 0x74 or op == 0x85 or op == 0x87:  # TUPLE2, TUPLE, 1, 3
                start = marks.pop() if op == 0x74 else len(stack) - (op - 0x84)
                if start < 0:
                    raise IndexError("a tuple of more items than the stack holds")
                items = stack[start:]
                del stack[start:]
                value = tuple(items)
                if not _CONTAINERS.isdisjoint(map(type, items)):
                    _nest(value, items, depths, limits.max_depth)
                push(value)
                count += CONTAINER_WEIGHT
            elif op == 0x4A or op == 0x4D:  # BININT, BININT2
                if op == 0x4A:
                    push(_I32(data, pos)[0])
                    pos += 4
                else:
                    push(_U16(data, pos)[0])
                    pos += 2
            elif op == 0x65 or op == 0x61:  # APPENDS, APPEND
                start = marks.pop() if op == 0x65 else len(stack) - 1
                if start < 1:
                    raise IndexError("APPEND(S) without a list")
                items = stack[start:]
                del stack[start:]
                target = stack[-1]
                if type(target) is not list:
                    raise MalformedMessageError("APPEND(S) on something not a fresh list")
                if not _CONTAINERS.isdisjoint(map(type, items)):
                    _nest(target, items, depths, limits.max_depth)
                target.extend(items)
            elif op == 0x4E:  # NONE
                push(None)
            elif op == 0x88:  # NEWTRUE
                push(True)
            elif op == 0x89:  # NEWFALSE
                push(False)
            elif op == 0x8A:  # LONG1
                n = data[pos]
                if n > limits.max_int_bytes:
                    raise FrameLimitError(
                        f"an integer of {n} bytes (at most {limits.max_int_bytes})"
                    )
                end = pos + 1 + n
                if end > size:
                    raise IndexError("integer past the end")
                push(int.from_bytes(data[pos + 1 : end], "little", signed=True))
                pos = end
            elif op == 0x43 or op == 0x42:  # SHORT_BINBYTES, BINBYTES
                if op == 0x43:
                    n = data[pos]
                    pos += 1
                else:
                    n = _U32(data, pos)[0]
                    pos += 4
                end = pos + n
                if end > size:
                    raise IndexError("bytes past the end")
                push(data[pos:end])
                pos = end
            elif op == 0x58:  # BINUNICODE
                n = _U32(data, pos)[0]
                end = pos + 4 + n
                if end > size:
                    raise IndexError("string past the end")
                push(data[pos + 4 : end].decode("utf-8", "surrogatepass"))
                pos = end
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x6A:  # LONG_BINGET
                obj = memo[_U32(data, pos)[0]]
                pos += 4
                if type(obj) in _SHARED:
                    push(obj)
                else:
                    value, pos, count = self._shared(obj, data, pos, memo, count, depths, nested)
                    push(value)
            elif op == 0x93:  # STACK_GLOBAL
                if nested:
                    raise MalformedMessageError("a class inside a wire object's fields")
                if len(stack) - (marks[-1] if marks else 0) < 2:
                    raise IndexError("STACK_GLOBAL without a module and a name")
                name = stack.pop()
                module = stack.pop()
                g = self._resolve(module, name)
                pos = _memoize(data, pos, memo, g)
                value, pos, count = self._construct(g, data, pos, memo, count, depths)
                push(value)
            elif op == 0x95:  # FRAME: a length hint for buffered readers
                if pos + 8 > size:
                    raise IndexError("FRAME past the end")
                pos += 8
            elif op == 0x2E and not nested or op == 0x62 and nested:  # STOP, BUILD
                if len(stack) != 1 or marks:
                    raise MalformedMessageError("the pickle does not end with one value")
                return stack[0], pos, count
            elif op == 0x62:
                raise MalformedMessageError("BUILD on an object this decoder did not create")
            elif op == 0x2E:
                raise MalformedMessageError("STOP inside a wire object's fields")
            else:
                raise MalformedMessageError(
                    f"opcode {bytes((op,))!r} at byte {pos - 1}: not used by LightLLM's messages"
                )

    def _shared(
        self,
        obj: Any,
        data: bytes,
        pos: int,
        memo: list[Any],
        count: int,
        depths: dict[int, int],
        nested: bool,
    ) -> tuple[Any, int, int]:
        """A memo reference to what is not a str, bytes or number: only a class may be one."""
        if type(obj) is _Global and not nested:
            return self._construct(obj, data, pos, memo, count, depths)
        raise MalformedMessageError(
            "a memo reference to a container, class or object: LightLLM's "
            "messages share only strings and classes"
        )

    def _resolve(self, module: Any, name: Any) -> _Global:
        if type(module) is not str or type(name) is not str:
            raise MalformedMessageError("STACK_GLOBAL needs two strings")
        g = self._globals.get((module, name))
        if g is None:
            raise ForbiddenGlobalError(module, name)
        return g

    def _construct(
        self, g: _Global, data: bytes, pos: int, memo: list[Any], count: int, depths: dict[int, int]
    ) -> tuple[Any, int, int]:
        """The value a class reference heads, read in the one shape its class is pickled."""
        if g.kind == _ENUM:  # cls (int,) REDUCE
            op = data[pos]
            if op == 0x4B:
                number, pos = data[pos + 1], pos + 2
            elif op == 0x4D:
                number, pos = _U16(data, pos + 1)[0], pos + 3
            elif op == 0x4A:
                number, pos = _I32(data, pos + 1)[0], pos + 5
            else:
                raise MalformedMessageError(f"{g.name[1]} must be called with an int")
            pos = _expect(data, pos, 0x85, f"{g.name[1]}(value)")
            pos = _memoize(data, pos, memo, _OPAQUE)
            pos = _expect(data, pos, 0x52, f"{g.name[1]}(value)")
            member = g.members.get(number)
            if member is None:
                raise MalformedMessageError(f"{number} is not a valid {g.name[1]} here")
            return member, _memoize(data, pos, memo, member), count + 1
        if g.kind == _UNPICKLE:  # _unpickle (cls, ({}, bytes)) REDUCE
            cls_ref, pos = self._class_ref(data, pos, memo)
            if cls_ref.kind != _STRUCT or cls_ref.struct is None:
                raise MalformedMessageError(f"_ctypes._unpickle of {cls_ref.name[1]}")
            pos = _expect(data, pos, 0x7D, "struct state {}")
            pos = _memoize(data, pos, memo, _OPAQUE)
            op = data[pos]
            if op == 0x43:
                n, pos = data[pos + 1], pos + 2
            elif op == 0x42:
                n, pos = _U32(data, pos + 1)[0], pos + 5
            else:
                raise MalformedMessageError("struct state must be ({}, bytes)")
            raw = data[pos : pos + n]
            pos += n
            spec = cls_ref.struct
            expected = ctypes.sizeof(spec.cls)
            if len(raw) != expected:
                raise MalformedMessageError(
                    f"{spec.cls.__name__} is {len(raw)} bytes but this layout has {expected}: "
                    "does the peer run another LightLLM version (--lightllm_version)?"
                )
            for _ in range(2):
                pos = _memoize(data, pos, memo, _OPAQUE)
                pos = _expect(data, pos, 0x86, "struct state tuple")
            pos = _memoize(data, pos, memo, _OPAQUE)
            pos = _expect(data, pos, 0x52, "_ctypes._unpickle call")
            value = spec.cls.from_buffer_copy(raw)
            if spec.check is not None:
                value = spec.check(value)
            return value, _memoize(data, pos, memo, _OPAQUE), count + 1
        if g.kind == _OBJECT and g.spec is not None:  # cls () NEWOBJ {fields} BUILD
            pos = _expect(data, pos, 0x29, f"{g.name[1]}()")
            pos = _expect(data, pos, 0x81, f"{g.name[1]}()")
            pos = _memoize(data, pos, memo, _OPAQUE)
            state, pos, count = self._run(data, pos, memo, count, depths, True)
            return _build_object(g.spec, state), pos, count + 1
        raise MalformedMessageError(f"the class {g.name[1]} as a value")

    def _class_ref(self, data: bytes, pos: int, memo: list[Any]) -> tuple[_Global, int]:
        """A class: STACK_GLOBAL of two strings (literal or memo references) or a memo reference."""
        first, pos = _atom(data, pos, memo)
        if type(first) is _Global:
            return first, pos
        name, pos = _atom(data, pos, memo)
        pos = _expect(data, pos, 0x93, "a class reference")
        g = self._resolve(first, name)
        return g, _memoize(data, pos, memo, g)


def _atom(data: bytes, pos: int, memo: list[Any]) -> tuple[Any, int]:
    """A string (then its MEMOIZE) or a memo reference to a string or class."""
    op = data[pos]
    if op == 0x8C:
        end = pos + 2 + data[pos + 1]
        if end > len(data):
            raise IndexError("string past the end")
        value: Any = data[pos + 2 : end].decode("utf-8", "surrogatepass")
        return value, _memoize(data, end, memo, value)
    if op == 0x58:
        end = pos + 5 + _U32(data, pos + 1)[0]
        if end > len(data):
            raise IndexError("string past the end")
        value = data[pos + 5 : end].decode("utf-8", "surrogatepass")
        return value, _memoize(data, end, memo, value)
    if op == 0x68:
        value, pos = memo[data[pos + 1]], pos + 2
    elif op == 0x6A:
        value, pos = memo[_U32(data, pos + 1)[0]], pos + 5
    else:
        raise MalformedMessageError("a class reference needs a module and a name")
    if type(value) is not str and type(value) is not _Global:
        raise MalformedMessageError("a class reference needs a module and a name")
    return value, pos


def _memoize(data: bytes, pos: int, memo: list[Any], value: Any) -> int:
    if pos < len(data) and data[pos] == 0x94:
        memo.append(value)
        return pos + 1
    return pos


def _expect(data: bytes, pos: int, op: int, what: str) -> int:
    if data[pos] != op:
        raise MalformedMessageError(f"{what}: expected opcode {bytes((op,))!r} at byte {pos}")
    return pos + 1


def _build_object(spec: ObjectSpec, state: Any) -> Any:
    name = spec.cls.__name__
    if type(state) is not dict or state.keys() != spec.fields.keys():
        raise MalformedMessageError(f"{name} must be built from exactly {list(spec.fields)}")
    for key, types in spec.fields.items():
        value = state[key]
        if type(value) not in types:
            raise MalformedMessageError(
                f"{name}.{key} must be {' or '.join(t.__name__ for t in types)}, "
                f"got {type(value).__name__}"
            )
    return spec.cls(**state)


def _nest(parent: Any, children: list[Any], depths: dict[int, int], max_depth: int) -> None:
    """Record ``parent``'s nesting depth (1 + its deepest child) and refuse it past the limit."""
    depth = depths.get(id(parent), 1)
    for child in children:
        if type(child) in _CONTAINERS:
            depth = max(depth, depths.get(id(child), 1) + 1)
    if depth > max_depth:
        raise FrameLimitError(f"nested deeper than {max_depth}")
    depths[id(parent)] = depth
