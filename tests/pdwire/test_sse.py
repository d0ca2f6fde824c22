from __future__ import annotations

from typing import Any

import orjson
import pytest

from pdwire.pd_io import TokenEntry
from pdwire.sse import FINISH_REASONS, sse_events
from pdwire.structs import FinishStatus


def event(text: str, meta: dict[str, Any], status: int) -> bytes:
    """LightLLM's event for one token, built the plain way."""
    reason = FINISH_REASONS.get(status)
    body = {
        "token": {
            "id": meta.get("id"),
            "text": text,
            "logprob": meta.get("logprob"),
            "special": meta.get("special", False),
            "count_output_tokens": meta.get("count_output_tokens"),
            "prompt_tokens": meta.get("prompt_tokens"),
        },
        "generated_text": None,
        "finished": reason is not None,
        "finish_reason": reason,
        "details": None,
    }
    return b"data:" + orjson.dumps(body) + b"\n\n"


META = {
    "id": 1236,
    "logprob": -0.25,
    "cumlogprob": -0.5,
    "special": False,
    "count_output_tokens": 2,
    "prompt_cache_len": 0,
    "prompt_tokens": 11,
}


@pytest.mark.parametrize("status", [0, 1, 2])
@pytest.mark.parametrize(
    ("text", "meta"),
    [(" is", META), ('"\\ é\n😀', {**META, "special": True}), ("", {}), ("x", {"id": None})],
)
def test_sse_events_are_lightllms_events(text: str, meta: dict[str, Any], status: int) -> None:
    entry: TokenEntry = (800008, text, meta, FinishStatus(status))
    assert sse_events([entry]) == event(text, meta, status)


def test_sse_events_joins_every_ready_token() -> None:
    entries: list[TokenEntry] = [
        (8, "a", META, FinishStatus(0)),
        (8, "b", META, FinishStatus(0)),
        (8, "c", META, FinishStatus(2)),
    ]
    assert sse_events(entries) == event("a", META, 0) + event("b", META, 0) + event("c", META, 2)
