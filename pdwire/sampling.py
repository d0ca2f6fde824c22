"""LightLLM's sampling parameters on the wire: the bounds a value must meet to be carried as
sent, and the copy of a request's values into any version's SamplingParams struct.

A node takes the struct's bytes as they are (it does not re-check them), so the master
checks what LightLLM's own ``SamplingParams.init``/``verify`` checks, plus what the struct
can hold: an int must fit its ctypes field and a float must survive float32 (finite, and
not so small that it rounds to 0 or loses its precision), so a value reaches the node as
sent or is refused, never changed. ``fill`` is driven by the struct's own fields, so a
version with another layout needs no code here; a field its struct lacks is ``NotCarried``.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Generic, TypeVar

import orjson
from pydantic import AfterValidator

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_MIN_NORMAL = 1.1754943508222875e-38
SAMPLING_EPS = 1e-5  # LightLLM: a temperature below this means greedy search


def int32(value: int) -> int:
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{value} does not fit the node's 32-bit integer field")
    return value


def float32(value: float) -> float:
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(f"{value!r} does not fit the node's 32-bit float field")
    if value != 0 and abs(value) < FLOAT32_MIN_NORMAL:
        raise ValueError(
            f"{value!r} is too small for the node's 32-bit float field (it would become 0)"
        )
    return value


Int32 = Annotated[int, AfterValidator(int32)]
Float32 = Annotated[float, AfterValidator(float32)]


def constraint_text(limit: int) -> AfterValidator:
    """A constraint string whose UTF-8 bytes stay under ``limit`` (LightLLM asserts ``<``)."""

    def check(value: str) -> str:
        size = len(value.encode("utf-8"))
        if size >= limit:
            raise ValueError(f"is {size} bytes in UTF-8; the node takes at most {limit - 1}")
        return value

    return AfterValidator(check)


class NotCarried(ValueError):
    """A value the version's struct has no field for, or cannot hold as sent."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def not_carried(cls: type, values: Mapping[str, Any]) -> str | None:
    """The first of ``values`` that struct ``cls`` has no field for, or None."""
    fields = _fields(cls)
    if fields.keys() >= values.keys():  # the usual answer, at C speed
        return None
    return next(name for name in values if name not in fields)


def field_names(cls: type) -> frozenset[str]:
    """The names of struct ``cls``'s fields, its bases' included."""
    return frozenset(_fields(cls))


def fill(params: ctypes.Structure, values: Mapping[str, Any]) -> None:
    """Copy ``values`` (struct field name -> value) into ``params``, each read back as sent."""
    fields = _fields(type(params))
    for name, value in values.items():
        kind = fields.get(name)
        if kind is None:
            raise NotCarried(name, "this LightLLM version's requests have no such field")
        if issubclass(kind, ctypes.Structure):
            _fill_struct(getattr(params, name), name, value)
        else:
            setattr(params, name, value)
            if not _same(getattr(params, name), value):
                raise NotCarried(name, f"{value!r} does not fit the node's field")


S = TypeVar("S", bound=ctypes.Structure)


class FilledParams(Generic[S]):
    """``fill`` of a fresh struct from ``new``, copied from an earlier fill of the same values.

    A SamplingParams is ~20 KB of ctypes fields; filling one field by field took ~80 us, a
    copy of its bytes ~2 (a request fills two: its prefill and its decode node's). The last
    ``size`` distinct value sets are kept, by their JSON (exact: 0.0 and -0.0, 1, 1.0 and
    true stay apart); refused values are never kept, so they are refused every time.
    """

    def __init__(self, new: Callable[[], S], size: int = 64) -> None:
        self._new = new
        self._size = size
        self._filled: dict[bytes, S] = {}
        # id(values) -> (values, filled): a request's parameter set is usually one shared
        # object (see client.ParameterSets), found here without its JSON; the entry keeps the
        # object alive, so its id is not reused while it is kept
        self._by_object: dict[int, tuple[Mapping[str, Any], S]] = {}

    def __call__(self, values: Mapping[str, Any]) -> S:
        """A fresh struct filled with ``values``."""
        done = self.filled(values)
        return type(done).from_buffer_copy(done)

    def filled(self, values: Mapping[str, Any]) -> S:
        """A struct filled with ``values``, perhaps shared: read it or copy it, never change
        it. ``values`` must not change afterwards (it is remembered by identity)."""
        seen = self._by_object.get(id(values))
        if seen is not None and seen[0] is values:
            return seen[1]
        try:
            key: bytes | None = orjson.dumps(values)
        except TypeError:  # an int past 64 bits: filled each time (carried exactly or refused)
            key = None
        done = self._filled.get(key) if key is not None else None
        if done is None:
            done = self._new()
            fill(done, values)
            if key is None:
                return done
            _put(self._filled, key, done, self._size)
        _put(self._by_object, id(values), (values, done), self._size)
        return done


K = TypeVar("K")
V = TypeVar("V")


def _put(kept: dict[K, V], key: K, value: V, size: int) -> None:
    """Keep ``value`` under ``key``, the oldest entry going past ``size``."""
    if len(kept) >= size:
        del kept[next(iter(kept))]
    kept[key] = value


def read(params: ctypes.Structure) -> dict[str, Any]:
    """The struct's scalar and constraint fields as plain values (what a node received)."""
    out: dict[str, Any] = {}
    for name, kind in _fields(type(params)).items():
        value = getattr(params, name)
        if not issubclass(kind, ctypes.Structure):
            out[name] = value
            continue
        shape = set(_fields(kind))
        if shape == {"constraint", "length"}:
            out[name] = bytes(value.constraint[: value.length]).decode("utf-8", "replace")
        elif shape == {"ids", "size"}:
            out[name] = list(value.ids[: value.size])
        elif shape == {"item0", "item1"}:
            out[name] = [value.item0, value.item1]
    return out


_FIELD_CACHE: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> dict[str, Any]:
    fields = _FIELD_CACHE.get(cls)
    if fields is None:
        fields = {}
        for klass in reversed(cls.__mro__):
            fields.update({f[0]: f[1] for f in klass.__dict__.get("_fields_", ())})
        _FIELD_CACHE[cls] = fields
    return fields


def _fill_struct(target: Any, name: str, value: Any) -> None:
    shape = set(_fields(type(target)))
    if shape == {"constraint", "length"}:
        raw = value.encode("utf-8")
        if len(raw) >= len(target.constraint):
            raise NotCarried(name, f"the node takes at most {len(target.constraint) - 1} bytes")
        ctypes.memmove(target.constraint, raw, len(raw))
        target.length = len(raw)
    elif shape == {"ids", "size"}:
        if len(value) > len(target.ids):
            raise NotCarried(name, f"the node takes at most {len(target.ids)} token ids")
        target.ids[: len(value)] = value
        target.size = len(value)
        if list(target.ids[: len(value)]) != list(value):
            raise NotCarried(name, "a token id does not fit the node's field")
    elif shape == {"item0", "item1"}:
        target.item0, target.item1 = value
        if not (target.item0 == value[0] and _same(target.item1, value[1])):
            raise NotCarried(name, f"{list(value)} does not fit the node's field")
    else:
        raise NotCarried(name, "the master does not fill this field from a request")


def _same(stored: Any, sent: Any) -> bool:
    """Whether the field holds what was sent: equal, or for floats its float32 rounding."""
    if isinstance(sent, float) and not isinstance(sent, bool):
        return bool(
            math.isfinite(stored)
            and (stored == 0) == (sent == 0)
            and math.isclose(stored, sent, rel_tol=2**-23)
        )
    return bool(stored == sent)
