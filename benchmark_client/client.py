"""Runs a workload against a server and records, per request, when each token arrived."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from benchmark_client.http import HttpError, Target, stream_post


@dataclass
class RequestRecord:
    input_tokens: int
    start: float = 0.0
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None  # kind: "http_429", "stream:node_failed", "timeout", "connection"
    # node send -> client receive per token, when token texts carry node send times
    delivery_s: list[float] = field(default_factory=list)
    streamed: bool = True  # False: a whole-answer URL (/generate), no per-token times

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        if not self.streamed:
            return None
        return self.token_times[0] - self.start if self.token_times else None

    def itls(self) -> list[float]:
        t = self.token_times if self.streamed else []
        return [t[i] - t[i - 1] for i in range(1, len(t))]

    def decode_token_time(self) -> float | None:
        """LightLLM's benchmark_client's: this request's mean gap after its first token."""
        gaps = self.itls()
        return sum(gaps) / len(gaps) if gaps else None


def lightllm_body(prompt: str, output_len: int) -> bytes:
    return orjson.dumps(
        {"inputs": prompt, "parameters": {"max_new_tokens": output_len, "ignore_eos": True}}
    )


def openai_body(prompt: str, output_len: int, model: str | None) -> bytes:
    body: dict[str, object] = {} if model is None else {"model": model}
    body |= {
        "prompt": prompt,
        "max_tokens": output_len,
        "stream": True,
        "ignore_eos": True,
    }
    return orjson.dumps(body)


def parse_events(data: bytes, api: str) -> tuple[int, str | None, list[str]]:
    """Tokens in one chunk of SSE events, an error kind if any, and the token texts."""
    tokens, error = 0, None
    texts: list[str] = []
    for line in data.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return tokens, "bad_event", texts
        if "error" in event:
            err = event["error"]
            error = (
                f"stream:{err.get('type', 'error')}" if isinstance(err, dict) else "stream:error"
            )
            continue
        if api == "openai":
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                tokens += 1
                texts.append(choices[0]["text"])
        elif event.get("token") is not None:
            tokens += 1
            texts.append(event["token"].get("text", ""))
    return tokens, error, texts


class _EventSink:
    """Turns a streamed response into a request's record, in the read that brought it."""

    __slots__ = ("record", "api", "stamped", "status", "_pending", "_whole_body", "_error_body")

    def __init__(self, record: RequestRecord, api: str, stamped: bool) -> None:
        self.record = record
        self.api = api
        self.stamped = stamped
        self.status = 0
        self._pending = b""
        self._whole_body: list[bytes] = []
        self._error_body: list[bytes] = []

    def head(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        content_type = headers.get("content-type", "")
        self.record.streamed = not content_type.startswith("application/json")

    def data(self, body: bytes, now: float, wall: float) -> None:
        if self.status != 200:
            self._error_body.append(body)
            return
        if not self.record.streamed:
            self._whole_body.append(body)
            return
        complete, _, self._pending = (self._pending + body).rpartition(b"\n\n")
        if not complete:
            return
        n, error, texts = parse_events(complete, self.api)
        record = self.record
        if self.stamped:
            for text in texts:
                sent = stamps(text)
                if sent:  # an OpenAI chunk's merged tokens: one per stamp, one unstamped
                    record.delivery_s.extend(wall - t for t in sent)
                    n += len(sent) - 1 + int(len(text) > STAMP_WIDTH * len(sent))
        record.token_times.extend([now] * n)
        record.output_tokens += n
        if error:
            record.error = error

    def finish(self) -> None:
        if self.status != 200:
            kind = _error_type(b"".join(self._error_body))
            self.record.error = f"http_{self.status}" + (f":{kind}" if kind else "")
        elif not self.record.streamed:
            count = _whole_answer_tokens(b"".join(self._whole_body))
            if count is None:
                self.record.error = "bad_answer"
            else:
                self.record.output_tokens = count


def _whole_answer_tokens(raw: bytes) -> int | None:
    """Output tokens of a whole answer: LightLLM's /generate or OpenAI's usage."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    count = answer.get("count_output_tokens")
    if count is None and isinstance(answer.get("usage"), dict):
        count = answer["usage"].get("completion_tokens")
    return count if isinstance(count, int) and count >= 0 else None


async def run_request(
    target: Target, body: bytes, record: RequestRecord, api: str, timeout: float, stamped: bool
) -> None:
    record.start = time.perf_counter()
    sink = _EventSink(record, api, stamped)
    try:
        async with asyncio.timeout(timeout):
            await stream_post(target, body, sink)
        sink.finish()
    except TimeoutError:
        record.error = "timeout"
    except (OSError, HttpError):
        record.error = "connection"
    finally:
        record.end = time.perf_counter()


def _error_type(raw: bytes) -> str | None:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("type") if isinstance(error, dict) else None


# The simulated engine's ``--text_mode timestamp`` text: f"{time.time():.6f}", 17 characters
# (its frame slot's width) until the year 2286.
STAMP_WIDTH = 17
_STAMP = re.compile(r"\d{10}\.\d{6}")


def stamps(text: str) -> list[float]:
    """The send times in one event's text: one per token, as many as an OpenAI chunk merged
    (their texts run together); none in a token that is not stamped (a prefill node's first),
    which a chunk may carry before them."""
    return [float(s) for s in _STAMP.findall(text)]


async def run_workload(
    target: Target,
    bodies: list[bytes],
    input_tokens: list[int],
    offsets: list[float],
    concurrency: int,
    api: str,
    timeout: float,
    on_done: Callable[[RequestRecord], None] = lambda r: None,
    stamped: bool = False,
) -> tuple[list[RequestRecord], float]:
    """All requests, at most ``concurrency`` at once, each sent no earlier than its offset."""
    records = [RequestRecord(n) for n in input_tokens]
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(i: int) -> None:
        delay = offsets[i] - (time.perf_counter() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            await run_request(target, bodies[i], records[i], api, timeout, stamped)
        on_done(records[i])

    await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return records, time.perf_counter() - started
