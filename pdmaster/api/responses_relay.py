"""OpenAI's Responses API answers from node tokens: the response object and its stream.

A stream is ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, a ``response.output_text.delta`` per chunk of text,
``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done`` and ``response.completed`` (``response.incomplete`` when
``max_output_tokens`` cut the answer), every event numbered by ``sequence_number``. A
failure after the first token ends it with ``response.failed``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pdmaster.api.openai_relay import Generation
from pdmaster.api.responses_schemas import ResponsesRequest
from pdmaster.api.text_request import sse_event
from pdmaster.errors import ApiError
from pdwire.pd_io import TokenEntry


class ResponseState:
    """One response: its ids, echoed request fields and the generation so far."""

    def __init__(self, model: str, body: ResponsesRequest, gen: Generation) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.model = model
        self.body = body
        self.gen = gen

    @property
    def status(self) -> str:
        if not self.gen.done:
            return "in_progress"
        return "incomplete" if self.gen.finish_reason == "length" else "completed"

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.gen.text, "annotations": [], "logprobs": []}

    def item(self) -> dict[str, Any]:
        status = self.status
        return {
            "type": "message",
            "id": self.item_id,
            "status": status,
            "role": "assistant",
            "content": [self.part()] if status != "in_progress" else [],
        }

    def response(self, error: ApiError | None = None) -> dict[str, Any]:
        """The response object; while it runs, without output or usage."""
        body, gen = self.body, self.gen
        status = "failed" if error is not None else self.status
        finished = status in ("completed", "incomplete")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None if error is None else {"code": "server_error", "message": error.message},
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": [self.item()] if finished else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": _usage(gen) if finished else None,
            "user": body.user,
            "metadata": body.metadata,
        }


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": gen.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


class ResponseEvents:
    """One response's stream (``chunk_writer.StreamEncoder``); the opening events come with
    the first chunk."""

    def __init__(self, state: ResponseState) -> None:
        self._s = state
        self._seq = 0
        self._started = False

    @property
    def done(self) -> bool:
        return self._s.gen.done

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(kind.encode(), data)

    def _at(self) -> dict[str, Any]:
        return {"item_id": self._s.item_id, "output_index": 0, "content_index": 0}

    def _head(self) -> bytes:
        s = self._s
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (
            self._event("response.created", response=s.response())
            + self._event("response.in_progress", response=s.response())
            + self._event("response.output_item.added", output_index=0, item=s.item())
            + self._event("response.content_part.added", **self._at(), part=empty_part)
        )

    def chunk(self, entries: list[TokenEntry]) -> bytes:
        head = b""
        if not self._started:
            self._started = True
            head = self._head()
        gen = self._s.gen
        if gen.done:
            return head
        text = gen.add(entries)
        if not text:
            return head
        delta = self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])
        return head + delta

    def close(self) -> bytes:
        s = self._s
        final = "response.incomplete" if s.status == "incomplete" else "response.completed"
        return (
            self._event("response.output_text.done", **self._at(), text=s.gen.text, logprobs=[])
            + self._event("response.content_part.done", **self._at(), part=s.part())
            + self._event("response.output_item.done", output_index=0, item=s.item())
            + self._event(final, response=s.response())
        )

    def error(self, exc: ApiError) -> bytes:
        return self._event("response.failed", response=self._s.response(exc))
