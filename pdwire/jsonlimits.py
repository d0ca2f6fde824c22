"""JSON from peers, with its cost bounded before it is paid.

``loads`` refuses a document over ``max_bytes``, nested deeper than ``max_depth``, with an
integer longer than ``max_int_digits`` digits (128-bit ids have 39) or a number that is
not finite, before the parser builds anything from it. Python's own parser would recurse
until ``RecursionError`` and spend quadratic time on a 4,000-digit integer. ``orjson``
reads a document ~10x faster but turns integers past 64 bits into floats, so it reads only
documents with no run of 19 digits (no integer it could change); anything it refuses (or
reads otherwise than Python: a BOM, UTF-16, an escaped lone surrogate) goes to Python's
parser, whose answer or refusal stands.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

import orjson

from pdwire.errors import WireError

POLICY_VIOLATION = 1008  # websocket close codes for a refused frame
MESSAGE_TOO_BIG = 1009

# A JSON string (escapes included) or one bracket: what depth depends on.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")
# orjson reads integers of up to 18 digits exactly (and 19-20 digits only within 64 bits)
_ORJSON_INT_DIGITS = 18
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (_ORJSON_INT_DIGITS + 1))


class JsonRefused(WireError):
    """A JSON document from a peer breaks a limit or is not JSON; ``close_code`` for sockets."""

    close_code = POLICY_VIOLATION


class JsonTooLarge(JsonRefused):
    close_code = MESSAGE_TOO_BIG


def loads(
    data: str | bytes,
    *,
    max_bytes: int,
    max_depth: int = 16,
    max_int_digits: int = 39,
) -> Any:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise JsonTooLarge(f"JSON document is {len(raw)} bytes; the limit is {max_bytes}")
    check_depth(raw, max_depth)
    if max_int_digits >= _ORJSON_INT_DIGITS and _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)  # every number it reads here is as Python reads it
        except orjson.JSONDecodeError:
            pass  # refused, or beyond it: Python's parser decides
    return python_loads(raw, max_int_digits)


def python_loads(raw: bytes, max_int_digits: int = 39) -> Any:
    """``loads`` past its size and depth checks, by Python's parser alone (the reference)."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads does
        return _python_decoder(max_int_digits).decode(text)
    except (ValueError, RecursionError) as exc:
        raise JsonRefused(f"not valid JSON: {exc}") from None


@functools.cache
def _python_decoder(max_int_digits: int) -> json.JSONDecoder:
    """Python's decoder with the number checks, made once per limit (it keeps no state)."""

    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > max_int_digits:
            raise JsonRefused(f"integer of {len(text)} digits; the limit is {max_int_digits}")
        return int(text)

    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise JsonRefused(f"number {text[:40]} is not finite")
        return value

    def parse_constant(name: str) -> None:
        raise JsonRefused(f"{name} is not a JSON number")

    return json.JSONDecoder(
        parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant
    )


def check_depth(raw: bytes, max_depth: int) -> None:
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # no deeper than its openers, strings' included: the scan is not needed
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if len(token) != 1:
            continue  # a string
        if token[0] in _OPENERS:
            depth += 1
            if depth > max_depth:
                raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1
