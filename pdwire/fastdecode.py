"""TOKEN_PACKS frames at C speed, as safe as ``safepickle``: one pass, no code run.

A token-pack frame is decoded for every few tokens, so the per-token cost matters. The C
extension ``pdwire._tokenpacks`` (built by ``pip install``; see its source for the rules)
reads the frame's opcodes itself and builds only the values such a frame holds: the entries
``(int, str, dict, FinishStatus)``, metadata and load dicts of plain data with str or int keys
nested at most 3 deep, no container reached twice; ObjType and FinishStatus are looked up in
the maps given here. Anything else (other messages, other shapes, a limit reached) returns
None, and the caller decodes with ``safepickle``, which has the last word. Where the extension
could not be built (no C compiler), every frame takes safepickle.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from itertools import chain, compress
from types import ModuleType
from typing import Any

from pdwire.extensions import optional_extension
from pdwire.safepickle import CONTAINER_WEIGHT, Limits

MAX_FAST_BYTES = 256 * 1024  # larger frames take safepickle (a frame of 1,000 entries is ~90 KB)
TOKEN_PACKS_DEPTH = 6  # message, entries, entry, metadata and its two levels
_SCALARS = frozenset({int, float, str, bool, type(None)})
_KEYS = frozenset({str, int})
_PLAIN = _SCALARS | {dict, list}


def extension() -> ModuleType | None:
    """The compiled decoder, or None where the install could not build it."""
    return optional_extension("pdwire._tokenpacks")


class TokenPacksDecoder:
    """The fast path for one version's TOKEN_PACKS frames: ``decode(data)`` gives
    (ObjType member, entries, load dict or None), or None: use safepickle."""

    def __init__(
        self,
        obj_type_name: tuple[str, str],
        token_packs: Any,
        lengths: Iterable[int],
        status_name: tuple[str, str],
        statuses: dict[bytes, Any],
        new_status: Callable[[bytes], Any],
        limits: Limits,
        *,
        slow: Callable[[bytes], Any] | None = None,
        keys: Iterable[str] = (),
        accelerated: bool = True,
    ) -> None:
        """``token_packs``: the ObjType member (its value is the one the frame names);
        ``lengths``: the message tuple's lengths the version sends (a token pack has 2 or 3);
        ``statuses``: a FinishStatus's 4 bytes -> the instance to use (the caller may add to
        it); ``new_status``: the same for bytes not in it, raising for a status the version
        does not have. ``limits``: safepickle's, which this path never goes past (it is off
        where they are below a token pack's nesting). ``slow``: what ``decode_or_slow`` calls
        for a frame this path does not take (safepickle's decoding, say): one call, the
        compiled one, where it does. ``keys``: the dict keys readers look up, given to them as
        these (interned) str objects, so a lookup matches by identity. ``accelerated=False``:
        never decode here (every frame takes safepickle), as where the extension is missing."""
        usable = accelerated and limits.max_depth >= TOKEN_PACKS_DEPTH
        # no Decoder: a build from before it, which the install replaces (a tree needs
        # ``setup.py build_ext`` again); safepickle decodes meanwhile, as without a compiler
        compiled = getattr(extension(), "Decoder", None) if usable else None
        self.decode: Callable[[bytes], tuple[Any, list[Any], Any] | None] = _declined
        self.decode_or_slow: Callable[[bytes], Any] = slow or self.decode
        if compiled is not None:
            decoder = compiled(
                obj_type_name,
                status_name,
                {token_packs.value: token_packs},
                statuses,
                new_status,
                # a frame's bytes bound its opcodes, containers (each as safepickle counts it:
                # its opcode and its weight) and MEMOIZEs
                min(MAX_FAST_BYTES, limits.max_objects // (1 + CONTAINER_WEIGHT), limits.max_memo),
                limits.max_dict_items,
                limits.max_int_bytes,
                tuple(lengths),
                slow=slow,
                keys=tuple(keys),
            )
            self.decode, self.decode_or_slow = decoder.decode, decoder.decode_or_slow

    @property
    def available(self) -> bool:
        """Whether frames are decoded here (else every one takes safepickle)."""
        return self.decode is not _declined


def _declined(data: bytes) -> None:
    return None


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
