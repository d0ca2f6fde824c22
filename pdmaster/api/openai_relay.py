"""OpenAI response bodies and SSE chunks from node token entries, with OpenAI's stop rule.

A LightLLM node ends a generation *after* a stop sequence's tokens and keeps their text;
OpenAI leaves the stop text out. ``StopScanner`` holds back text that may begin a stop
string and cuts the output at the first stop string, also one the node missed because the
text came out in other tokens (the route then ends the request, which aborts it on the
nodes).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from typing import Any

import orjson

from pdmaster.errors import ApiError
from pdwire.pd_io import TokenEntry
from pdwire.sse import FINISH_REASONS, CompiledTextChunk

DONE = b"data: [DONE]\n\n"
# Stand for a chunk's text (or usage) and a stream's id while a format's events are cut up
_MARK = "\x00text\x01"
_ID_MARK = "\x00id\x01"
_CREATED_ZERO = b',"created":0,'


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_body(exc: ApiError) -> dict[str, Any]:
    """The project's error body plus OpenAI's ``param``: the field a 4xx message starts with."""
    body = exc.body()
    field, sep, _ = exc.message.partition(": ")
    named = sep and 400 <= exc.status < 500 and field and " " not in field
    body["error"]["param"] = field if named else None
    return body


class StopScanner:
    __slots__ = ("_stops", "_starts", "_window", "_held", "stopped", "matched")

    def __init__(self, stops: list[str]) -> None:
        self._stops = stops
        # A held-back end begins at one of the stops' first characters, at most the longest
        # stop's length but one from the end: one search finds where it may begin.
        firsts = "".join({s[0] for s in stops if s})
        self._starts = re.compile(f"[{re.escape(firsts)}]" if firsts else "(?!)")
        self._window = max(map(len, stops), default=1) - 1
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, text: str) -> str:
        """What of ``text`` may be sent now; sets ``stopped`` at the first stop string."""
        if self.stopped:
            return ""
        if self._held:
            text = self._held + text
        at = -1
        for stop in self._stops:  # the earliest stop; of two at one place, the first listed
            i = text.find(stop)
            if i >= 0 and (at < 0 or i < at):
                at, self.matched = i, stop
        if at >= 0:
            self.stopped = True
            self._held = ""
            return text[:at]
        keep = self._stop_prefix_at_end(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, once the generation ended without a stop string."""
        held, self._held = self._held, ""
        return held

    def _stop_prefix_at_end(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the start of a stop string."""
        end = len(text)
        found = self._starts.search(text, max(end - self._window, 0))
        while found is not None:
            at = found.start()
            tail = text[at:]
            for stop in self._stops:
                if stop.startswith(tail):
                    return end - at
            found = self._starts.search(text, at + 1)
        return 0


class Generation:
    """One choice's text, token counts and finish reason as node entries arrive.

    Without stop strings there is no ``StopScanner``: each token's text goes out as it
    came, which is what the scanner would let out. For a stream's steps that end nothing,
    ``pdmaster/_lane.c`` (with ``pdwire._sse.text_chunk``) does what ``add`` does: change
    them together.
    """

    __slots__ = ("prompt_tokens", "completion_tokens", "done", "_scanner", "_status", "_parts")

    def __init__(self, prompt_tokens: int, stops: list[str], keep_text: bool = True) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.done = False  # a stop string or a finish status ended the answer
        self._scanner = StopScanner(stops) if stops else None
        self._status = 0
        self._parts: list[str] | None = [] if keep_text else None  # a stream sends, not keeps

    def add(self, entries: list[TokenEntry]) -> str:
        """Take the entries; return the text they add to the answer."""
        scanner = self._scanner
        if scanner is None and len(entries) == 1:  # a stream's usual step: the loop's outcome
            _, text, meta, status = entries[0]
            self.completion_tokens = meta.get("count_output_tokens", self.completion_tokens + 1)
            self.prompt_tokens = meta.get("prompt_tokens", self.prompt_tokens)
            self._status = code = status.status
            self.done = code != 0
            if self._parts is not None:
                self._parts.append(text)
            return text
        count, prompt = self.completion_tokens, self.prompt_tokens
        out = []
        for _, text, meta, status in entries:
            count = meta.get("count_output_tokens", count + 1)
            prompt = meta.get("prompt_tokens", prompt)
            self._status = status.status
            if scanner is not None:
                text = scanner.push(text)
                if scanner.stopped:
                    out.append(text)
                    break
            out.append(text)
        self.completion_tokens, self.prompt_tokens = count, prompt
        stopped = scanner is not None and scanner.stopped
        if self._status != 0 and scanner is not None and not stopped:
            out.append(scanner.flush())
        self.done = stopped or self._status != 0
        added = out[0] if len(out) == 1 else "".join(out)
        if self._parts is not None:
            self._parts.append(added)
        return added

    @property
    def passes_text(self) -> bool:
        """Each token's text goes out as it came (no stop strings) and none is kept."""
        return self._scanner is None and self._parts is None

    @property
    def text(self) -> str:
        assert self._parts is not None, "a streamed generation keeps no text"
        return "".join(self._parts)

    @property
    def finish_reason(self) -> str | None:
        if self._scanner is not None and self._scanner.stopped:
            return "stop"
        return FINISH_REASONS.get(self._status)

    @property
    def stop_sequence(self) -> str | None:
        """The stop string the answer ended at, if any."""
        return None if self._scanner is None else self._scanner.matched

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class RandomHex:
    """Random hex digits from ``os.urandom``, read 1 KB at a time: one system call per 32 ids.
    For the event loop's thread only."""

    __slots__ = ("_digits", "_at")

    def __init__(self) -> None:
        self._digits = ""
        self._at = 0

    def take(self, n: int) -> str:
        at = self._at
        if at + n > len(self._digits):
            self._digits, at = os.urandom(max(1024, n)).hex(), 0
        self._at = at + n
        return self._digits[at : at + n]


class CompletionFormat:
    """``text_completion`` bodies and chunks (/v1/completions)."""

    __slots__ = ("id", "created", "model", "include_usage")

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(
        self, model: str, include_usage: bool = False, ids: RandomHex | None = None
    ) -> None:
        digits = secrets.token_hex(16) if ids is None else ids.take(32)
        self.id = f"{self.id_prefix}-{digits}"  # as random as a uuid4's hex
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def body(self, gen: Generation) -> dict[str, Any]:
        choice = self._choice(gen.text, gen.finish_reason)
        return self._envelope(self.object, [choice], usage=gen.usage())

    def opening_chunks(self) -> list[dict[str, Any]]:
        return []

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        choice = self._delta_choice(text, finish_reason)
        if self.include_usage:
            return self._envelope(self.chunk_object, [choice], usage=None)
        return self._envelope(self.chunk_object, [choice])

    def usage_chunk(self, usage: Any) -> dict[str, Any]:
        return self._envelope(self.chunk_object, [], usage=usage)

    def _envelope(self, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        head = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        return {**head, "choices": choices, **extra}

    def _choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def _delta_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return self._choice(text, finish_reason)


class ChatFormat(CompletionFormat):
    """``chat.completion`` bodies and ``chat.completion.chunk`` deltas (/v1/chat/completions)."""

    __slots__ = ()

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def opening_chunks(self) -> list[dict[str, Any]]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        if self.include_usage:
            return [self._envelope(self.chunk_object, [choice], usage=None)]
        return [self._envelope(self.chunk_object, [choice])]

    def _choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def _delta_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class StreamEvents:
    """A format's stream events as bytes, worked out once from its chunks (per endpoint,
    model and usage choice), so that a stream's events cost no dicts.

    Every event begins with its stream's lead, ``data: {"id":..,"object":..,"created":..,``,
    which a stream makes once; the rest of each event is fixed but for the one value that
    changes, which goes between two fixed parts: a text chunk's text, the last chunk's text
    (per finish reason), the usage.
    """

    __slots__ = (
        "include_usage",
        "text_chunk",
        "text",
        "opening",
        "usage",
        "_start",
        "_object",
        "_ends",
        "_id_prefix",
        "_second",
    )

    def __init__(self, fmt: CompletionFormat, text_chunk: CompiledTextChunk | None = None) -> None:
        """``text_chunk``: the C writer of text chunks (``pdwire.sse.compiled_text_chunk``),
        for the compiled relay of a stream's plain steps; None: every chunk is written here."""
        probe = type(fmt)(fmt.model, fmt.include_usage)
        probe.id, probe.created = _ID_MARK, 0
        self.include_usage = fmt.include_usage
        self.text_chunk = text_chunk
        self._id_prefix = fmt.id_prefix + "-"
        self._second = (-1, b"")  # a time and the lead's bytes after the id, made for it
        sample = sse(probe.chunk(_MARK, None))
        self._start, found, after = sample.partition(orjson.dumps(_ID_MARK))
        self._object, found_created, _ = after.partition(_CREATED_ZERO)
        assert found and found_created and self._start == b'data: {"id":'
        self.text = self._split(sample)
        self.opening = tuple(self._rest(sse(chunk)) for chunk in probe.opening_chunks())
        self.usage = self._split(sse(probe.usage_chunk(_MARK)))
        # finish reason -> (the last chunk around its text, the last chunk without text)
        self._ends = {
            reason: (
                self._split(sse(probe.chunk(_MARK, reason))),
                self._rest(sse(probe.chunk("", reason))),
            )
            for reason in {"stop", *FINISH_REASONS.values()}
        }

    def lead(self, id: str, created: int) -> bytes:
        """The start of each of the events of the stream with this id and time."""
        second, after_id = self._second
        if created != second:
            after_id = self._object + b',"created":%d,' % created
            self._second = (created, after_id)
        return self._start + orjson.dumps(id) + after_id

    def new_lead(self, ids: RandomHex) -> bytes:
        """The lead of a new stream: a new id, made now (as ``CompletionFormat`` makes them)."""
        return self.lead(self._id_prefix + ids.take(32), int(time.time()))

    def end(self, lead: bytes, text: str, gen: Generation) -> bytes:
        """The last chunk (with ``text``), the usage chunk if asked for, and ``[DONE]``."""
        with_text, without_text = self._ends[gen.finish_reason]
        if text:
            out = lead + with_text[0] + orjson.dumps(text) + with_text[1]
        else:
            out = lead + without_text
        if self.include_usage:
            mid, tail = self.usage
            out += lead + mid + orjson.dumps(gen.usage()) + tail
        return out + DONE

    def _rest(self, event: bytes) -> bytes:
        """The event after the probe's lead."""
        lead = self._start + orjson.dumps(_ID_MARK) + self._object + _CREATED_ZERO
        assert event.startswith(lead)
        return event[len(lead) :]

    def _split(self, event: bytes) -> tuple[bytes, bytes]:
        """The event after the lead, cut where the value (``_MARK``) goes."""
        mark = orjson.dumps(_MARK)
        mid, found, tail = self._rest(event).partition(mark)
        assert found and mark not in tail
        return mid, tail


class OpenAIStream:
    """One stream's OpenAI chunks: text as the stop rule lets it out, then the finish chunk,
    usage (if asked) and ``[DONE]``; a failure after the first chunk ends with an error event.

    Its events are its format's (``events``), each after the stream's ``lead`` (its id and
    time): a text chunk costs one ``orjson.dumps`` of a string. ``pdmaster/_lane.c`` writes
    the text chunks of steps that end nothing itself (``lane_parts``); this is its reference.
    """

    __slots__ = ("_gen", "_events", "_lead", "_head", "_tail", "_opening", "done")

    def __init__(self, gen: Generation, events: StreamEvents, lead: bytes) -> None:
        self._gen = gen
        self._events = events
        self._lead = lead
        self._head = lead + events.text[0]
        self._tail = events.text[1]
        opening = events.opening
        self._opening = b"".join([lead + rest for rest in opening]) if opening else b""
        self.done = False

    def chunk(self, entries: list[TokenEntry]) -> bytes:
        if self.done:
            return b""
        gen = self._gen
        text = gen.add(entries)
        if gen.done:
            self.done = True
            body = self._events.end(self._lead, text, gen)
        elif text:
            body = self._head + orjson.dumps(text) + self._tail
        else:
            body = b""
        if self._opening:  # the chat's role chunk, before the first tokens
            body, self._opening = self._opening + body, b""
        return body

    def lane_parts(self) -> tuple[CompiledTextChunk, Generation, bytes, bytes] | None:
        """For the compiled relay: the C writer, the generation whose counts it moves on, and
        a text chunk's bytes before and after its text. None where text may be held back (stop
        strings) or the writer is not built: then ``chunk`` writes every chunk."""
        text_chunk = self._events.text_chunk
        if text_chunk is None or not self._gen.passes_text:
            return None
        return text_chunk, self._gen, self._head, self._tail

    def error(self, exc: ApiError) -> bytes:
        self.done = True
        return sse(error_body(exc)) + DONE

    def close(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        return self._events.end(self._lead, "", self._gen)
