"""LightLLM's streaming client format: ``data:{...}\n\n`` events built from node token entries.

Masters relay these to clients; a simulated node in ``normal`` mode serves them itself.
"""

from __future__ import annotations

import orjson

from pdwire.pd_io import TokenEntry

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


def sse_events(entries: list[TokenEntry]) -> bytes:
    """All ready tokens of one stream as one chunk of ``data:{...}\\n\\n`` events."""
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
