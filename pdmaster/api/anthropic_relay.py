"""Anthropic's Messages API answers from node tokens: the message body, the stream's events
and Anthropic's error shape.

A stream is ``message_start``, ``content_block_start`` (one text block), a
``content_block_delta`` per chunk of text, ``content_block_stop``, ``message_delta`` (stop
reason, stop sequence, output tokens) and ``message_stop``; a failure after the first token
ends it with an ``error`` event instead. Stop sequences are left out of the text, as
Anthropic does, and the one that ended the answer is named in ``stop_sequence``.
"""

from __future__ import annotations

import uuid
from typing import Any

from pdmaster.api.openai_relay import Generation
from pdmaster.api.text_request import sse_event
from pdmaster.errors import ApiError
from pdwire.pd_io import TokenEntry

# Anthropic's error types by our statuses: 429 and 503 are "overloaded" (retry later).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "overloaded_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(exc: ApiError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def stop_reason(gen: Generation) -> str | None:
    if gen.stop_sequence is not None:
        return "stop_sequence"
    return {"stop": "end_turn", "length": "max_tokens"}.get(gen.finish_reason or "")


def usage(gen: Generation) -> dict[str, int]:
    return {"input_tokens": gen.prompt_tokens, "output_tokens": gen.completion_tokens}


def message_body(msg_id: str, model: str, gen: Generation) -> dict[str, Any]:
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": gen.text}],
        "stop_reason": stop_reason(gen),
        "stop_sequence": gen.stop_sequence,
        "usage": usage(gen),
    }


class MessageEvents:
    """One message's stream (``chunk_writer.StreamEncoder``): the opening events come with
    the first chunk; once a stop sequence has ended the answer, tokens add nothing."""

    def __init__(self, model: str, gen: Generation) -> None:
        self._id = message_id()
        self._model = model
        self._gen = gen
        self._started = False

    @property
    def done(self) -> bool:
        return self._gen.done

    def _head(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._gen.prompt_tokens, "output_tokens": 0},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": _text("")}
        return sse_event(b"message_start", {"type": "message_start", "message": message}) + (
            sse_event(b"content_block_start", block)
        )

    def chunk(self, entries: list[TokenEntry]) -> bytes:
        head = b""
        if not self._started:
            self._started = True
            head = self._head()
        if self._gen.done:
            return head
        text = self._gen.add(entries)
        if not text:
            return head
        delta = {"type": "content_block_delta", "index": 0, "delta": _text_delta(text)}
        return head + sse_event(b"content_block_delta", delta)

    def close(self) -> bytes:
        gen = self._gen
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(gen), "stop_sequence": gen.stop_sequence},
            "usage": {"output_tokens": gen.completion_tokens},
        }
        return (
            sse_event(b"content_block_stop", {"type": "content_block_stop", "index": 0})
            + sse_event(b"message_delta", delta)
            + sse_event(b"message_stop", {"type": "message_stop"})
        )

    def error(self, exc: ApiError) -> bytes:
        return sse_event(b"error", error_body(exc))


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _text_delta(text: str) -> dict[str, str]:
    return {"type": "text_delta", "text": text}
