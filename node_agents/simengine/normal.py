"""``--run_mode normal``: the simulated engine as a plain LightLLM server, no PD split.

It serves ``POST /generate_stream`` itself (prefill, then the same continuous-batching
decode loop as a decode node), so benchmarks can compare a client talking to the engine
directly with the same workload through a PD master.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from node_agents.simengine.decode import DecodeNode
from node_agents.simengine.engine import Running
from node_agents.simengine.textgen import Detokenizer
from pdwire.client import GenerateRequest
from pdwire.pd_io import MAX_BEST_OF, TokenEntry
from pdwire.sse import sse_events


class LocalStream:
    """Stands where a master link stands: the decode loop hands it this request's tokens."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[TokenEntry]] = asyncio.Queue()


class NormalNode(DecodeNode):
    """A whole engine in one process: prefill then decode, answering HTTP clients itself."""

    _next_id = MAX_BEST_OF

    async def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._loop(), name="decode-loop")]

    async def send_tokens(self, per_link: dict[Any, Any]) -> None:
        for stream, entries in self.stamped(per_link).items():
            self.stats.tokens += len(entries)
            stream.queue.put_nowait(entries)

    async def generate(self, body: GenerateRequest) -> AsyncIterator[bytes]:
        params = body.parameters
        prompt_ids = self.tokenizer.encode(body.inputs)
        group_id = self._next_id
        self._next_id += MAX_BEST_OF
        self.stats.requests += 1
        kv_tokens = await self.kv.reserve(len(prompt_ids) + params.max_new_tokens)
        stream = LocalStream()
        stops = [self.tokenizer.encode(s) for s in params.stop_sequences]
        gen = self.plain_generation(
            prompt_ids, params.max_new_tokens, params.ignore_eos, params.min_new_tokens, stops
        )
        detok = Detokenizer(self.pieces, params.skip_special_tokens)
        running = Running(group_id, stream, gen, detok, len(prompt_ids), kv_tokens)  # type: ignore[arg-type]
        decoding = False
        try:
            await self.step_pause(self.timing.prefill_s(len(prompt_ids)))
            entry, status = running.step(self.tokenizer)
            await self.send_tokens({stream: [entry]})
            if status == 0:
                self._running[group_id] = running
                decoding = True
                self._work.set()
            while True:
                entries = await stream.queue.get()
                yield sse_events(entries)
                if entries[-1][3].status != 0:
                    return
        finally:
            # the decode loop frees what it finishes; free the rest (early end, disconnect)
            if not decoding or self._running.pop(group_id, None) is not None:
                await self.kv.release(kv_tokens)


def normal_router(node: NormalNode) -> APIRouter:
    router = APIRouter()

    @router.post("/generate_stream")
    async def generate_stream(request: Request) -> Response:
        try:
            body = GenerateRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            message = f"{field}: {first['msg']}"
            error = {"type": "invalid_request_error", "code": "invalid_field", "message": message}
            return JSONResponse({"error": error}, status_code=422)
        return StreamingResponse(node.generate(body), media_type="text/event-stream")

    return router
