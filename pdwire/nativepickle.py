"""Token packs pickled at C speed: the C pickler writes the message with our mirror classes'
references, then LightLLM's module and name take the place of ours (``NativeNamed``), where
``pdwire.fastpickle`` would write the same bytes in Python. For the simulated nodes, which
send a frame per decode step. Where the install built it, ``pdwire._packenc`` (its Python
twin: ``NativeNamed`` without it, and ``pdwire.fastpickle``) writes the same bytes first, in
one pass of C."""

from __future__ import annotations

import _ctypes
import ctypes
import enum
import pickle
import struct
from typing import Any

from pdwire.extensions import optional_extension
from pdwire.fastpickle import global_reference

_FRAME_SIZE_TARGET = 64 * 1024  # past one frame, pickle splits it: left to the general one
_U64 = struct.Struct("<Q").pack
_BATCH = 1000  # pickle's batch of list and dict items
_DEPTH = 64  # containers in containers checked by ``_small``; deeper: left to the next pickler
_CTYPES_UNPICKLE = _ctypes._unpickle  # type: ignore[attr-defined]
_SCALARS = frozenset({int, float, str, bool, type(None), bytes})


class _Unsupported(Exception):
    pass


class NativeNamed:
    """Messages pickled by the C pickler, our mirror classes' references rewritten to LightLLM's.

    A class travels by reference: the first time as SHORT_BINUNICODE module, MEMOIZE,
    SHORT_BINUNICODE name, MEMOIZE, STACK_GLOBAL, MEMOIZE, then as memo references. Putting
    LightLLM's module and name in place of ours changes no memo index, so the C pickler's
    message, renamed, is the message ``pdwire.fastpickle.dumps`` writes (and LightLLM's own
    ``pickle.dumps``), at C speed: ~1.3 us per token entry against ~17 us. ``dumps`` here
    returns None, and the caller takes ``pdwire.fastpickle``'s, for what it cannot vouch for:

    - an object of a class not in ``names`` (found by ``reducer_override``, which the C
      pickler calls for every object but plain ints, floats, strs, bytes, lists, tuples and
      dicts and None, True and False);
    - a list of more than 1,000 items or a dict of 1,000 or more among a token's metadata
      or the load, or more than 1,000 entries (the C pickler writes a last batch of one item
      as MARK item APPENDS, the Python one as item APPEND; a dict of 1,000 items gets an
      empty second batch);
    - a class's reference bytes found other than once: in a bytes value too (no string's
      UTF-8 holds them: UTF-8 has no continuation byte, as 0x94 is, after an ASCII letter),
      or not at all (its module or name a memo reference: the same string object seen
      earlier in the message); a message past one frame.

    Picklers are kept between messages (their memo cleared after each), one per message
    being pickled at a time.

    Token packs go to the compiled encoder first (``pdwire._packenc``, where the install
    built it, for ``names`` of one ctypes struct, one enum and ``_ctypes._unpickle``), which
    writes the same bytes in one pass or returns None for what it does not vouch for (see its
    source); then to the C pickler as above.
    """

    def __init__(self, names: dict[Any, tuple[str, str]], *, compiled: bool = True) -> None:
        """``names``: the classes (and functions) messages may hold, each with its (module,
        name) in LightLLM; no two classes may share a module, on either side.
        ``compiled=False``: no compiled encoder (tests compare the two paths)."""
        self._kinds = frozenset(cls for cls in names if isinstance(cls, type))
        for side in ({c.__module__ for c in self._kinds}, {names[c][0] for c in self._kinds}):
            if len(side) < len(self._kinds):
                raise ValueError("two classes share a module: its name would be a memo reference")
        self._globals = {id(obj): obj for obj in names}  # kept alive: ids stay theirs
        self._renames = {
            cls: (global_reference(cls.__module__, cls.__qualname__), global_reference(*names[cls]))
            for cls in self._kinds
        }
        self._idle: list[_NamedPickler] = []
        self._compiled = _compiled_encoder(names) if compiled else None
        self.compiled = self._compiled is not None
        """Whether token packs go to the compiled encoder first."""

    def token_packs(self, message: tuple[Any, ...]) -> bytes | None:
        """``(ObjType.TOKEN_PACKS, entries[, load])`` as ``dumps`` writes it, or None."""
        if self._compiled is not None:
            raw: bytes | None = self._compiled.dumps(message)
            if raw is not None:
                return raw
        entries = message[1]
        if type(entries) is not list or len(entries) > _BATCH:
            return None
        if len(message) > 2 and not _small(message[2]):
            return None
        scalars = _SCALARS
        for entry in entries:
            if type(entry) is tuple and len(entry) > 2:
                meta = entry[2]
                if type(meta) is dict and len(meta) < _BATCH:
                    if scalars.issuperset(map(type, meta.values())):
                        continue  # the usual metadata: no container in it, at C speed
                if not _small(meta):
                    return None
        return self.dumps(message)

    def dumps(self, message: Any) -> bytes | None:
        """``message`` as fastpickle's ``dumps`` writes it, or None (see the class); the
        caller has checked that no list or dict in it holds more than 1,000 items."""
        idle = self._idle
        pickler = idle.pop() if idle else _NamedPickler(self._kinds, self._globals)
        try:
            raw = pickler.pickle(message)
            saved = pickler.saved
            if raw is None:
                return None
            body = raw[11:]
            for cls in saved:
                ours, theirs = self._renames[cls]
                if body.count(ours) != 1:
                    return None  # in data too, or a memo reference in it (a string seen before)
                body = body.replace(ours, theirs)
        finally:
            pickler.saved = []
            idle.append(pickler)
        if len(body) >= _FRAME_SIZE_TARGET:
            return None
        return b"\x80\x04\x95" + _U64(len(body)) + body


class _NamedPickler(pickle.Pickler):
    """The C pickler, refusing objects of classes not named, noting the classes it saves.

    Named structs and enums are reduced here as their ``__reduce_ex__`` would (ctypes'
    ``PyCData_reduce``, ``Enum.__reduce_ex__``; checked on a sample of each), without
    pickle's look-ups on the way there.
    """

    def __init__(self, kinds: frozenset[type], named: dict[int, Any]) -> None:
        self._written: list[bytes] = []
        super().__init__(_Sink(self._written.append), protocol=4)
        self._kinds = kinds
        self._named = named
        self._structs = frozenset(k for k in kinds if _reduces_as_struct(k))
        self._enums = frozenset(k for k in kinds if _reduces_as_enum(k))
        self.saved: list[type] = []

    def pickle(self, message: Any) -> bytes | None:
        """One frame, the whole message; None for what it refuses or more than one frame."""
        written = self._written
        try:
            self.dump(message)
        except (_Unsupported, pickle.PicklingError):
            return None
        finally:
            self.clear_memo()  # it holds the message's objects until then
        raw = written.pop() if len(written) == 1 else None
        written.clear()
        if raw is None or raw[2:3] != b"\x95" or raw[3:11] != _U64(len(raw) - 11):
            return None  # more than one frame, or none
        return raw

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in self._structs:
            return _CTYPES_UNPICKLE, (kind, (obj.__dict__, bytes(obj)))
        if kind in self._enums:
            return kind, (obj._value_,)
        if kind in self._kinds:
            return NotImplemented  # its class is saved next, as pickle does
        if id(obj) in self._named:
            if obj in self._kinds:
                self.saved.append(obj)
            return NotImplemented
        raise _Unsupported


def _compiled_encoder(names: dict[Any, tuple[str, str]]) -> Any:
    """``pdwire._packenc``'s encoder for ``names``, or None: not built, or ``names`` not one
    struct (reduced as ctypes does), one enum (reduced as Enum does) and ``_ctypes._unpickle``."""
    module = optional_extension("pdwire._packenc")
    structs = [k for k in names if isinstance(k, type) and _reduces_as_struct(k)]
    enums = [k for k in names if isinstance(k, type) and _reduces_as_enum(k)]
    if module is None or len(structs) != 1 or len(enums) != 1 or len(names) != 3:
        return None
    if _CTYPES_UNPICKLE not in names:
        return None
    struct, kind = structs[0], enums[0]
    return module.Encoder(
        _CTYPES_UNPICKLE, names[_CTYPES_UNPICKLE], struct, names[struct], kind, names[kind]
    )


def _reduces_as_struct(kind: type) -> bool:
    if not issubclass(kind, ctypes.Structure):
        return False
    sample = kind()
    try:
        reduced = sample.__reduce_ex__(4)
    except ValueError:  # a struct holding pointers: pickle refuses it
        return False
    return bool(reduced == (_CTYPES_UNPICKLE, (kind, (sample.__dict__, bytes(sample)))))


def _reduces_as_enum(kind: type) -> bool:
    if not issubclass(kind, enum.Enum):
        return False
    return all(m.__reduce_ex__(4) == (kind, (m._value_,)) for m in kind)


class _Sink:
    """A file for the pickler: what it writes goes to ``write``."""

    __slots__ = ("write",)

    def __init__(self, write: Any) -> None:
        self.write = write


def _small(obj: Any, seen: set[int] | None = None, depth: int = 0) -> bool:
    """Whether every list in ``obj`` has at most 1,000 items and every dict fewer: past
    that, the C pickler batches them otherwise (a dict of exactly 1,000 items gets a
    second, empty batch). A container met again (one that holds itself) counts once;
    containers nested past ``_DEPTH`` are not vouched for (False)."""
    kind = type(obj)
    if kind is not dict and kind is not list and kind is not tuple:
        return True
    if seen is None:
        seen = set()
    if id(obj) in seen:
        return True
    if depth > _DEPTH:
        return False
    seen.add(id(obj))
    if kind is dict:
        return len(obj) < _BATCH and all(_small(v, seen, depth + 1) for v in obj.values())
    return (kind is tuple or len(obj) <= _BATCH) and all(_small(v, seen, depth + 1) for v in obj)
