"""A fast stand-in for the HTTP prefill/decode workers behind SGLang's and vLLM's routers.

For ``vs_gateways``: it answers what those routers send in PD mode on the OpenAI API
(``/v1/completions``, ``/v1/chat/completions``) and what they probe (health, models,
server info). A prefill worker answers one token, as a real prefill server does, and adds
``kv_transfer_params`` when asked for them (vllm-router reads them back and passes them to
the decode worker); SGLang's ``bootstrap_*`` fields are accepted and ignored. A decode
worker streams ``max_tokens`` tokens (``ignore_eos`` is implied), one SSE chunk per
stream per step; all of a worker's streams share one step loop, as a batch does on a real
engine, and a step takes ``--step_ms`` (0: as fast as the loop turns). A stream whose
client does not read is skipped until its socket drains.

Run: ``python -m benchmarks.mock_worker --port 8100 --role decode``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any, cast

import httptools
import orjson
import uvloop

MAX_BODY = 1 << 20
INFO_PATHS = {
    b"/health",
    b"/health_generate",
    b"/liveness",
    b"/readiness",
    b"/get_server_info",
    b"/server_info",
    b"/get_model_info",
    b"/model_info",
    b"/version",
}
TOKEN_TEXT = " tok"


class Stream:
    """One streamed answer: its pre-framed chunks, written one per step."""

    __slots__ = ("conn", "chunk", "last", "left")

    def __init__(self, conn: Connection, chunk: bytes, last: bytes, tokens: int) -> None:
        self.conn = conn
        self.chunk = chunk
        self.last = last
        self.left = tokens


class Worker:
    def __init__(self, role: str, step_s: float, model: str) -> None:
        self.role = role
        self.step_s = step_s
        self.model = model
        self.streams: list[Stream] = []
        self._wake = asyncio.Event()

    async def run_steps(self) -> None:
        while True:
            if not self.streams:
                self._wake.clear()
                await self._wake.wait()
            started = time.monotonic()
            live = []
            for s in self.streams:
                if s.conn.closed:
                    continue
                if s.conn.paused:
                    live.append(s)
                    continue
                s.left -= 1
                if s.left > 0:
                    s.conn.write(s.chunk)
                    live.append(s)
                else:
                    s.conn.write(s.last)
                    s.conn.done()
            self.streams = live
            await asyncio.sleep(max(0.0, self.step_s - (time.monotonic() - started)))

    def add(self, stream: Stream) -> None:
        self.streams.append(stream)
        self._wake.set()


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class Connection(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.closed = False
        self.paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._reply(400, b'{"error": "bad request"}', close=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.size = 0

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_BODY:
            self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        method = self.parser.get_method()
        if self.size > MAX_BODY:
            self._reply(413, b'{"error": "body too large"}', close=True)
        elif method == b"GET" and path in INFO_PATHS:
            info = {"status": "ok", "model_path": self.worker.model, "is_generation": True}
            self._reply(200, orjson.dumps(info))
        elif method == b"GET" and path == b"/v1/models":
            model = {"id": self.worker.model, "object": "model", "owned_by": "mock"}
            self._reply(200, orjson.dumps({"object": "list", "data": [model]}))
        elif method == b"POST" and path in (b"/v1/completions", b"/v1/chat/completions"):
            self._complete(path == b"/v1/chat/completions")
        elif method == b"GET" and path == b"/metrics":
            self._reply(200, b"", b"text/plain")
        else:
            self._reply(404, b'{"error": "not found"}')

    # answers
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def done(self) -> None:
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()

    def _reply(
        self, status: int, body: bytes, kind: bytes = b"application/json", close: bool = False
    ) -> None:
        head = b"HTTP/1.1 %d X\r\ncontent-type: %b\r\ncontent-length: %d\r\n" % (
            status,
            kind,
            len(body),
        )
        if close:
            head += b"connection: close\r\n"
        self.write(head + b"\r\n" + body)
        if close and self.transport is not None:
            self.transport.close()
        else:
            self.done()

    def _complete(self, chat: bool) -> None:
        try:
            req = orjson.loads(b"".join(self.body))
            tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            self._reply(400, b'{"error": "body: not a completion request"}')
            return
        if self.worker.role == "prefill":
            tokens = 1
        tokens = max(1, min(tokens, 1 << 16))
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": 0, "model": self.worker.model}
        if not req.get("stream"):
            text = TOKEN_TEXT * tokens
            whole: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
            if chat:
                whole["message"] = {"role": "assistant", "content": text}
            else:
                whole["text"] = text
            out: dict[str, Any] = {**head, "object": kind, "choices": [whole]}
            out["usage"] = {"prompt_tokens": 1, "completion_tokens": tokens}
            if "kv_transfer_params" in req:  # vllm-router hands these on to the decode worker
                out["kv_transfer_params"] = {"remote_engine_id": "mock", "remote_block_ids": []}
            self._reply(200, orjson.dumps(out))
            return
        kind += ".chunk" if chat else ""

        def event(finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                choice["delta"] = {"content": TOKEN_TEXT}
            else:
                choice["text"] = TOKEN_TEXT
            return _sse({**head, "object": kind, "choices": [choice]})

        self.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        last = _chunk(event("length") + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.worker.add(Stream(self, _chunk(event(None)), last, tokens))


async def serve(host: str, port: int, role: str, step_ms: float, model: str) -> None:
    worker = Worker(role, step_ms / 1000, model)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(worker), host, port, backlog=4096)
    steps = asyncio.ensure_future(worker.run_steps())
    try:
        await server.serve_forever()
    finally:
        steps.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--role", choices=["prefill", "decode"], default="decode")
    p.add_argument("--step_ms", type=float, default=0.0, help="time per decode step")
    p.add_argument("--model", default="mock")
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port, args.role, args.step_ms, args.model))


if __name__ == "__main__":
    main()
