"""The client API of a master: LightLLM's /generate, /generate_stream and health endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from pdmaster.dispatch import PDDispatcher, PreparedRequest
from pdmaster.errors import ApiError, BadRequest, PayloadTooLarge
from pdmaster.node_pool import NodePool
from pdmaster.policies import RequestView, prefix_blocks
from pdmaster.relay import Collector, stream_body
from pdmaster.schemas import GenerateRequest
from pdmaster.settings import MasterSettings
from pdmaster.tokenizer import ModelTokenizer

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Unprocessable(ApiError):
    status = 422
    type = "invalid_request_error"


class ClientDisconnected(Exception):
    pass


async def read_json(request: Request, model: type[M], limit: int) -> M:
    """The body as ``model``: 413 past ``limit`` bytes, 400 if not JSON, 422 naming the field."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        data = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise Unprocessable(f"{field}: {first['msg']}", code="invalid_field") from None


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it (its cleanup sends the ABORTs) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientDisconnected()
        watcher.cancel()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def prepare(
    body: GenerateRequest, tokenizer: ModelTokenizer, settings: MasterSettings
) -> PreparedRequest:
    params = body.parameters
    if params.max_new_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"parameters.max_new_tokens: {params.max_new_tokens} exceeds this master's maximum "
            f"of {settings.max_new_tokens}",
            code="invalid_field",
        )
    prompt_ids = tokenizer.encode(body.inputs)
    prompt_tokens = len(prompt_ids)
    if prompt_tokens == 0:
        raise BadRequest("inputs: the prompt is empty", code="invalid_field")
    if prompt_tokens + params.max_new_tokens > settings.max_req_total_len:
        raise BadRequest(
            f"inputs: {prompt_tokens} prompt tokens + max_new_tokens {params.max_new_tokens} "
            f"exceed max_req_total_len {settings.max_req_total_len}",
            code="invalid_field",
        )
    stop_ids = [tokenizer.encode(s) for s in params.stop_sequences]
    if any(len(ids) > 256 for ids in stop_ids):
        raise BadRequest(
            "parameters.stop_sequences: a stop sequence is over 256 tokens", code="invalid_field"
        )
    view = RequestView(prompt_tokens, params.max_new_tokens, prefix_blocks(prompt_ids))
    return PreparedRequest(body.inputs, prompt_tokens, params, stop_ids, view)


def client_router(
    dispatcher: PDDispatcher, pool: NodePool, tokenizer: ModelTokenizer, settings: MasterSettings
) -> APIRouter:
    router = APIRouter()

    async def generate_all(prepared: PreparedRequest) -> dict[str, Any]:
        session = dispatcher.session(prepared)
        collector = Collector(prepared.prompt_tokens, prepared.parameters.return_details)
        try:
            collector.add(await session.first())
            while not session.finished:
                collector.add(await session.next())
        finally:
            await session.close()
        return collector.body()

    @router.post("/generate")
    async def generate(request: Request) -> Response:
        body = await read_json(request, GenerateRequest, settings.max_body_bytes)
        prepared = prepare(body, tokenizer, settings)
        try:
            result = await until_disconnect(request, generate_all(prepared))
        except ClientDisconnected:
            return Response(status_code=499)
        return Response(orjson.dumps(result), media_type="application/json")

    @router.post("/generate_stream")
    async def generate_stream(request: Request) -> Response:
        body = await read_json(request, GenerateRequest, settings.max_body_bytes)
        session = dispatcher.session(prepare(body, tokenizer, settings))
        try:
            first = await until_disconnect(request, session.first())
        except ClientDisconnected:
            return Response(status_code=499)
        return StreamingResponse(stream_body(session, first), media_type="text/event-stream")

    def ok() -> dict[str, str]:
        return {"status": "ok"}

    for path in ("/health", "/healthz", "/liveness"):
        router.add_api_route(path, ok, methods=["GET", "HEAD"])

    @router.get("/readiness")
    async def readiness() -> Response:
        prefill, decode = len(pool.candidates("prefill")), len(pool.candidates("decode"))
        body = {"prefill_nodes": prefill, "decode_nodes": decode}
        if prefill and decode:
            return JSONResponse({"status": "ready", **body})
        return JSONResponse({"status": "not_ready", **body}, status_code=503)

    return router
