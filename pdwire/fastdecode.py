"""TOKEN_PACKS frames at C speed, as safe as ``safepickle``: proved first, then unpickled.

A token-pack frame is decoded for every few tokens, so the per-token cost matters. Here a
regular expression proves the opcode stream is a token pack as LightLLM's pickler and ours
write it (one ObjType call, a list of ``(int, str, dict, FinishStatus)`` entries, a load
dict): only these opcodes, in these places, metadata nested at most ``dict -> dict -> dict``
with str or int keys, no BUILD, NEWOBJ or BINPUT. Only then does the C unpickler run it,
with two callables of ours as the only globals (the ObjType lookup and a ``_ctypes._unpickle``
that builds a checked FinishStatus), so no other code can run, and no key it hashes can be
a tuple of shared parts.

What a regular language cannot see is where a memo reference (BINGET) points; a check of the
result does: keys str or int, values plain, every container reached once. Anything this path
does not cover (other messages, longer strings, deeper metadata, large frames, a failed
check) returns None, and the caller decodes with ``safepickle``, which has the last word.
"""

from __future__ import annotations

import functools
import io
import operator
import pickle
import re
from collections.abc import Callable, Mapping
from itertools import chain, compress
from typing import Any

MAX_FRAME_BYTES = 256 * 1024  # bounds the C unpickler's memo and values on this path
_SCALARS = frozenset({int, float, str, bool, type(None)})
_KEYS = frozenset({str, int})
_PLAIN = _SCALARS | {dict, list}


def _counted(op: bytes, widths: range) -> bytes:
    """``op`` then a one-byte length n then n bytes, for each n in ``widths``."""
    alternatives = b"|".join(re.escape(bytes((n,))) + (b".{%d}" % n if n else b"") for n in widths)
    return re.escape(op) + b"(?:" + alternatives + b")"


@functools.cache
def grammar() -> re.Pattern[bytes]:
    # possessive (``*+``, ``?+``): the grammar is deterministic, so no backtracking is needed
    m = b"\\x94?+"  # MEMOIZE, where the pickler may write one
    get = b"(?:h.|j.{4})"
    string = b"(?:" + _counted(b"\x8c", range(256)) + m + b"|" + get + b")"
    small_int = b"(?:K.|M.{2}|J.{4})"
    scalar = b"(?:" + small_int + b"|" + _counted(b"\x8a", range(18)) + b"|G.{8}|N|\x88|\x89)"
    key = b"(?:" + string + b"|" + small_int + b")"

    def container(value: bytes) -> tuple[bytes, bytes]:
        pair = key + value
        items = b"(?:\\((?:" + pair + b")++u|" + pair + b"s)*+"
        elements = b"(?:\\((?:" + value + b")++e|" + value + b"a)*+"
        return b"\\}" + m + items, b"\\]" + m + elements

    value0 = b"(?:" + scalar + b"|" + string + b")"
    dict0, list0 = container(value0)
    value1 = b"(?:" + scalar + b"|" + string + b"|" + dict0 + b"|" + list0 + b")"
    dict1, list1 = container(value1)
    value2 = b"(?:" + scalar + b"|" + string + b"|" + dict1 + b"|" + list1 + b")"
    meta, _ = container(value2)
    cls = b"(?:" + get + b"|" + string + string + b"\x93" + m + b")"
    status = cls + cls + b"\\}" + m + b"C\x04.{4}" + m + b"\x86" + m + b"\x86" + m + b"R" + m
    entry = b"\\(" + small_int + string + meta + status + b"t" + m
    entries = b"\\]" + m + b"(?:\\((?:" + entry + b")++e|" + entry + b"a)*+"
    obj_type = cls + b"K.\x85" + m + b"R" + m
    load = dict1
    body = obj_type + entries + b"(?:" + load + b"\x87|\x86)" + m + b"\\."
    return re.compile(b"(?s)" + body)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, globals_: dict[tuple[str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._globals = globals_

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name}") from None


class _StructRef:
    """What a struct's class name resolves to here: a name for ``_unpickle``, nothing else."""

    __slots__ = ()


class TokenPacksDecoder:
    """The fast path for one version's TOKEN_PACKS frames; None where it does not apply."""

    def __init__(
        self,
        obj_type_name: tuple[str, str],
        obj_types: Mapping[int, Any],
        status_name: tuple[str, str],
        statuses: Callable[[bytes], Any],
    ) -> None:
        """``obj_types``: ObjType value -> member; ``statuses``: a FinishStatus's 4 bytes ->
        the instance to use (raising KeyError for a status the version does not have)."""
        status_ref = _StructRef()

        def unpickle(cls: Any, state: tuple[dict[str, Any], bytes]) -> Any:
            # the grammar made state ({}, 4 bytes); cls may be any class or memo reference
            if cls is not status_ref:
                raise pickle.UnpicklingError("_ctypes._unpickle of another class")
            return statuses(state[1])

        self._globals: dict[tuple[str, str], Any] = {
            obj_type_name: obj_types.__getitem__,
            status_name: status_ref,
            ("_ctypes", "_unpickle"): unpickle,
        }

    def decode(self, data: bytes) -> tuple[Any, list[Any], Any] | None:
        """(ObjType member, entries, load dict or None), or None: use safepickle."""
        if len(data) > MAX_FRAME_BYTES:
            return None
        body = _body(data)
        if body is None or grammar().fullmatch(body) is None:  # compiled at first use (~1 s)
            return None
        if len(data) != len(body) + 11:  # not one frame: unpickle exactly what was proved
            data = b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body
        try:
            msg = _Unpickler(data, self._globals).load()
        except Exception:  # noqa: BLE001 - any failure: safepickle decodes and explains
            return None
        load = msg[2] if len(msg) == 3 else None
        if not plain_entries(msg[1], load):
            return None
        return msg[0], msg[1], load


_TEXT = operator.itemgetter(1)
_META = operator.itemgetter(2)
_IS_DICT = functools.partial(operator.is_, dict)
_IS_LIST = functools.partial(operator.is_, list)
_IS_CONTAINER = functools.partial(operator.contains, frozenset({dict, list}))


def plain_entries(entries: list[Any], load: Any) -> bool:
    """Token entries' texts are str, their metadata (and the load dict) plain data with str or
    int keys, containers at most two levels below the metadata, none reached twice.

    Checked level by level, each level in a few passes at C speed."""
    if not {str}.issuperset(map(type, map(_TEXT, entries))):
        return False
    level = list(map(_META, entries))
    if load is not None:
        level.append(load)
    seen = set(map(id, level))
    if len(seen) != len(level):
        return False
    for _ in range(3):
        dicts = list(compress(level, map(_IS_DICT, map(type, level))))
        if not _KEYS.issuperset(map(type, chain.from_iterable(dicts))):
            return False
        values = list(chain.from_iterable(map(dict.values, dicts)))
        if len(dicts) != len(level):
            values += chain.from_iterable(compress(level, map(_IS_LIST, map(type, level))))
        types = set(map(type, values))
        if _SCALARS.issuperset(types):
            return True
        if not _PLAIN.issuperset(types):
            return False
        level = list(compress(values, map(_IS_CONTAINER, map(type, values))))
        ids = set(map(id, level))
        if len(ids) != len(level) or not seen.isdisjoint(ids):
            return False  # a container reached twice: a memo reference
        seen |= ids
    return False  # nested deeper than the grammar allows


def _body(data: bytes) -> bytes | None:
    """The opcodes after PROTO, without the FRAME headers (one per 64 KiB, at frame starts)."""
    if len(data) < 3 or data[0] != 0x80 or not 2 <= data[1] <= 5:
        return None
    if data[2] != 0x95:
        return data[2:]
    if len(data) == 11 + int.from_bytes(data[3:11], "little"):
        return data[11:]
    parts = []
    pos = 2
    while pos < len(data) and data[pos] == 0x95:
        start = pos + 9
        pos = start + int.from_bytes(data[pos + 1 : start], "little")
        if pos > len(data):
            return None
        parts.append(data[start:pos])
    if pos != len(data):
        return None
    return b"".join(parts)
