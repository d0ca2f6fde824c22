"""Turning node token entries into LightLLM's client responses (SSE events or one JSON body)."""

from __future__ import annotations

from typing import Any

import orjson

from pdmaster.errors import ApiError
from pdwire.pd_io import TokenEntry
from pdwire.sse import FINISH_REASONS, sse_events


def sse_error(error: ApiError) -> bytes:
    body = error.body()
    body.update(finished=True, finish_reason="error")
    return b"data:" + orjson.dumps(body) + b"\n\n"


class LightLLMStream:
    """LightLLM's events, token by token; it holds no state, so one serves every stream."""

    __slots__ = ()
    done = False
    chunk = staticmethod(sse_events)  # called per stream per step: no frame of its own

    def error(self, exc: ApiError) -> bytes:
        return sse_error(exc)

    def close(self) -> bytes:
        return b""


class Collector:
    """Accumulates a whole generation for the non-streaming /generate answer."""

    def __init__(self, prompt_tokens: int, return_details: bool) -> None:
        self.texts: list[str] = []
        self.tokens: list[dict[str, Any]] | None = [] if return_details else None
        self.count_output_tokens = 0
        self.finish_reason: str | None = None
        self.prompt_tokens = prompt_tokens

    def add(self, entries: list[TokenEntry]) -> None:
        for _, text, meta, status in entries:
            self.texts.append(text)
            self.count_output_tokens = meta.get("count_output_tokens", self.count_output_tokens + 1)
            self.prompt_tokens = meta.get("prompt_tokens", self.prompt_tokens)
            self.finish_reason = FINISH_REASONS.get(status.status)
            if self.tokens is not None:
                token = {k: v for k, v in meta.items() if k != "prompt_ids"}
                token["text"] = text
                self.tokens.append(token)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "generated_text": ["".join(self.texts)],
            "count_output_tokens": self.count_output_tokens,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
        }
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out
