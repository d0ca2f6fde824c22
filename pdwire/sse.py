"""LightLLM's streaming client format: ``data:{...}\n\n`` events built from node token entries.

Masters relay these to clients; a simulated node in ``normal`` mode serves them itself.
A chunk is written by the C extension ``pdwire._sse`` (built by ``pip install``) where it is
there and takes the entries; else, and for entries it leaves alone (values orjson writes in a
way it does not, or refuses), by ``python_sse_events``, which it must agree with byte for byte.
The extension also writes OpenAI's text chunks for the master's compiled relay
(``compiled_text_chunk``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from pdwire.extensions import optional_extension
from pdwire.pd_io import TokenEntry
from pdwire.structs import FinishStatus

FINISH_REASONS = {0: None, 1: "stop", 2: "length"}


def _event_tail(reason: str | None) -> bytes:
    """What follows ``"token"`` in an event: the same for every token of a finish status."""
    tail = {
        "generated_text": None,
        "finished": bool(reason),
        "finish_reason": reason,
        "details": None,
    }
    return b"," + orjson.dumps(tail)[1:] + b"\n\n"


EVENT_TAILS = {status: _event_tail(reason) for status, reason in FINISH_REASONS.items()}
COMPILED_CONFIG = (FinishStatus, EVENT_TAILS, EVENT_TAILS[0], orjson.dumps)

CompiledEvents = Callable[[list[TokenEntry], tuple[Any, ...]], bytes | None]


def compiled_events() -> CompiledEvents | None:
    """The C writer (``events(entries, config)``: the chunk, or None for the Python path), or
    None where the install could not build it."""
    module = optional_extension("pdwire._sse")
    if module is None:
        return None
    events: CompiledEvents = module.events
    return events


_COMPILED = compiled_events()

CompiledTextChunk = Callable[..., tuple[bytes, Any, Any] | None]


def compiled_text_chunk() -> CompiledTextChunk | None:
    """The C writer of an OpenAI stream's text chunks (``text_chunk``, see ``pdwire/_sse.c``;
    ``pdmaster/api/openai_relay.py`` is its reference), or None where the install did not
    build it (or built it before it had one)."""
    writer: CompiledTextChunk | None = getattr(
        optional_extension("pdwire._sse"), "text_chunk", None
    )
    return writer


def python_http_chunk(body: bytes) -> bytes:
    """``body`` (not empty: an empty chunk ends the body) framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def compiled_http_chunk() -> Callable[[bytes], bytes]:
    """``python_http_chunk`` in C where the install built it (a third of the cost)."""
    module = optional_extension("pdwire._sse")
    if module is None:
        return python_http_chunk
    framer: Callable[[bytes], bytes] = module.http_chunk
    return framer


http_chunk = compiled_http_chunk()


def sse_events(entries: list[TokenEntry]) -> bytes:
    """All ready tokens of one stream as one chunk of ``data:{...}\\n\\n`` events."""
    if _COMPILED is not None:
        chunk = _COMPILED(entries, COMPILED_CONFIG)
        if chunk is not None:
            return chunk
    return python_sse_events(entries)


def python_sse_events(entries: list[TokenEntry]) -> bytes:
    """``sse_events`` in Python: the reference the C writer is tested against."""
    out = []
    dumps = orjson.dumps
    for _, text, meta, status in entries:
        get = meta.get
        token = {
            "id": get("id"),
            "text": text,
            "logprob": get("logprob"),
            "special": get("special", False),
            "count_output_tokens": get("count_output_tokens"),
            "prompt_tokens": get("prompt_tokens"),
        }
        out.append(
            b'data:{"token":' + dumps(token) + EVENT_TAILS.get(status.status, EVENT_TAILS[0])
        )
    return out[0] if len(out) == 1 else b"".join(out)
