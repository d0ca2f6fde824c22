"""The client API of a master: LightLLM's /generate, /generate_stream and health endpoints."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from pdmaster.api.hot_path import Opened, SseEndpoint
from pdmaster.api.relay import Collector, LightLLMStream
from pdmaster.api.service import ClientDisconnected, GenerateService
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.errors import ApiError, BadRequest, PayloadTooLarge
from pdmaster.nodes.pool import NodePool
from pdmaster.routing.policies import RequestView, prefix_blocks
from pdmaster.settings import MasterSettings
from pdmodel.tokenizer import ModelTokenizer
from pdwire.api import decimal
from pdwire.client import GenerateRequest
from pdwire.structs import layout_for

M = TypeVar("M", bound=BaseModel)
# Prompts longer than this (in characters, at least as many bytes) are tokenized off the
# event loop: 16 KB took ~10 ms to tokenize here (the simulated model's BPE, 2 shared cores).
INLINE_TOKENIZE_CHARS = 16 * 1024


class Unprocessable(ApiError):
    status = 422
    type = "invalid_request_error"


async def read_json(request: Request, model: type[M], limit: int) -> M:
    """The body as ``model``: 413 past ``limit`` bytes, 400 if not JSON, 422 naming the field."""
    declared = request.headers.get("content-length")
    if declared is not None and (decimal(declared) or 0) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {json_problem(raw, exc)}", code="invalid_json"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise Unprocessable(f"{field}: {first['msg']}", code="invalid_field") from None


def json_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """orjson's reason, except for bytes that are not UTF-8, which it calls "surrogates"."""
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return f"byte {bad.start} (0x{raw[bad.start]:02x}) is not UTF-8"
    return str(exc)


def check_prompt_size(prompt: str, settings: MasterSettings, field: str = "inputs") -> None:
    """413 naming ``field`` for a prompt over the byte limit, before it costs a tokenizing."""
    limit = settings.prompt_byte_limit
    size = len(prompt) if len(prompt) > limit else len(prompt.encode(errors="surrogatepass"))
    if size > limit:
        raise PayloadTooLarge(
            f"{field}: the prompt is over {limit} bytes, more than max_req_total_len "
            f"{settings.max_req_total_len} tokens can hold (--max_prompt_bytes)",
            code="prompt_too_large",
        )


async def prepare_offloaded(
    body: GenerateRequest, tokenizer: ModelTokenizer, settings: MasterSettings
) -> PreparedRequest:
    """``prepare``, tokenizing a large prompt in a worker thread: on the event loop it would
    stall every stream for as long (~10 ms per 16 KB, measured)."""
    prompt_ids = None
    if len(body.inputs) > INLINE_TOKENIZE_CHARS:
        check_prompt_size(body.inputs, settings)
        prompt_ids = await asyncio.to_thread(tokenizer.encode_unlocked, body.inputs)
    return prepare(body, tokenizer, settings, prompt_ids)


def prepare(
    body: GenerateRequest,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    prompt_ids: list[int] | None = None,
) -> PreparedRequest:
    """Check and tokenize a request (``prompt_ids``: its prompt already tokenized)."""
    params = body.parameters
    if params.max_new_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"parameters.max_new_tokens: {params.max_new_tokens} exceeds this master's maximum "
            f"of {settings.max_new_tokens}",
            code="invalid_field",
        )
    if prompt_ids is None:
        check_prompt_size(body.inputs, settings)
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
    refused = params.not_carried_by(layout_for(settings.lightllm_version).SamplingParams)
    if refused is not None:
        raise BadRequest(
            f"parameters.{refused}: LightLLM {settings.lightllm_version} nodes cannot take it "
            "(their requests have no field for it)",
            code="unsupported_field",
        )
    vocab = tokenizer.vocab_size
    for name, ids in (
        ("allowed_token_ids", params.allowed_token_ids),
        ("logit_bias", [int(k) for k in params.logit_bias]),
    ):
        if any(i >= vocab for i in ids):
            raise BadRequest(
                f"parameters.{name}: token id {max(ids)} is not in the model's vocabulary "
                f"of {vocab}",
                code="invalid_field",
            )
    stop_ids = [tokenizer.encode(s) for s in params.stop_sequences]
    if any(len(ids) > 256 for ids in stop_ids):
        raise BadRequest(
            "parameters.stop_sequences: a stop sequence is over 256 tokens", code="invalid_field"
        )
    view = RequestView(prompt_tokens, params.max_new_tokens, prefix_blocks(prompt_ids))
    return PreparedRequest(body.inputs, prompt_tokens, params, stop_ids, view)


def generate_stream_endpoint(
    service: GenerateService, tokenizer: ModelTokenizer, settings: MasterSettings
) -> SseEndpoint:
    """LightLLM's POST /generate_stream, served on the hot path (see hot_path.py)."""

    events = LightLLMStream()

    async def open_run(request: Request) -> Opened:
        body = await read_json(request, GenerateRequest, settings.max_body_bytes)
        prepared = await prepare_offloaded(body, tokenizer, settings)
        return service.run("generate_stream", prepared), events

    return SseEndpoint(open_run)


def client_router(
    service: GenerateService, pool: NodePool, tokenizer: ModelTokenizer, settings: MasterSettings
) -> APIRouter:
    router = APIRouter()

    @router.post("/generate")
    async def generate(request: Request) -> Response:
        body = await read_json(request, GenerateRequest, settings.max_body_bytes)
        prepared = await prepare_offloaded(body, tokenizer, settings)
        collector = Collector(prepared.prompt_tokens, prepared.parameters.return_details)
        try:
            await service.run("generate", prepared).run_to_end(request, collector.add)
        except ClientDisconnected:
            return Response(status_code=499)
        return Response(orjson.dumps(collector.body()), media_type="application/json")

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
