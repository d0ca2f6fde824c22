"""The client API of a master: LightLLM's /generate, /generate_stream and health endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from pdmaster.api.hot_path import Opened, SseEndpoint
from pdmaster.api.relay import Collector, LightLLMStream
from pdmaster.api.service import ClientDisconnected, GenerateService
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.errors import ApiError, BadRequest, PayloadTooLarge
from pdmaster.nodes.pool import NodePool
from pdmaster.routing.policies import RequestView, prefix_blocks, reads_prefixes
from pdmaster.settings import MasterSettings
from pdmodel.tokenizer import ModelTokenizer
from pdwire.api import decimal
from pdwire.client import GenerateParameters, ParameterSets

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# Bodies and prompts longer than this (bytes; characters: at least as many bytes) are parsed,
# rendered and tokenized off the event loop: 16 KB took ~10 ms to tokenize here (the
# simulated model's BPE, 2 shared cores), and a 16 KB message list as long to validate.
INLINE_BYTES = 16 * 1024
# A JSON string spends at most 6 bytes (a \u00XX escape) on one byte of text, so a message
# list whose body is over 6x the prompt limit renders to a prompt over it (unless the body
# is mostly fields the chat template leaves out).
BODY_BYTES_PER_PROMPT_BYTE = 6


class Unprocessable(ApiError):
    status = 422
    type = "invalid_request_error"


async def read_bytes(request: Request, limit: int) -> bytes:
    """The body: 413 past ``limit`` bytes (declared or sent), before reading any further.

    Read from the ASGI messages as ``request.stream()`` reads them, without its async
    generator (asyncio registers each one, a few us per request).
    """
    declared = header(request.scope["headers"], b"content-length")
    if declared is not None and (decimal(declared) or 0) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as the server passes names)."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_prompt_body(request: Request, settings: MasterSettings, field: str) -> bytes:
    """The body of a request whose prompt is the message list ``field``: 413 naming it when
    the body is too long for its prompt to be within the byte limit (its parsing and
    rendering cost as much as the body is long)."""
    limit = BODY_BYTES_PER_PROMPT_BYTE * settings.prompt_byte_limit
    if limit >= settings.max_body_bytes:
        return await read_bytes(request, settings.max_body_bytes)
    try:
        return await read_bytes(request, limit)
    except PayloadTooLarge:
        raise PayloadTooLarge(
            f"{field}: the request body is over {limit} bytes, {BODY_BYTES_PER_PROMPT_BYTE}x "
            f"the prompt limit of {settings.prompt_byte_limit} bytes (--max_prompt_bytes)",
            code="prompt_too_large",
        ) from None


def parse_json(raw: bytes, model: type[M]) -> M:
    """``raw`` as ``model``: 400 if not JSON, 422 naming the field."""
    return validated(json_body(raw), model.model_validate)


def json_body(raw: bytes) -> Any:
    """``raw`` parsed: 400 if it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {json_problem(raw, exc)}", code="invalid_json"
        ) from None


def validated(data: Any, validate: Callable[[Any], T]) -> T:
    """``validate(data)``: 422 naming the first field it refuses."""
    try:
        return validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise Unprocessable(f"{field}: {first['msg']}", code="invalid_field") from None


async def read_json(request: Request, model: type[M], limit: int) -> M:
    """The body as ``model``: 413 past ``limit`` bytes, 400 if not JSON, 422 naming the field."""
    return parse_json(await read_bytes(request, limit), model)


async def off_loop(size: int, work: Callable[[], T]) -> T:
    """``work()``; in a worker thread when ``size`` (the bytes its cost grows with) is over
    INLINE_BYTES: on the event loop it would stall every stream for as long."""
    if size <= INLINE_BYTES:
        return work()
    return await asyncio.to_thread(work)


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


def encode_prompt(
    prompt: str, tokenizer: ModelTokenizer, settings: MasterSettings, field: str = "inputs"
) -> list[int]:
    """The prompt's tokens, once ``check_prompt_size`` passes. A long prompt is tokenized
    with the GIL released, so that a worker thread doing it leaves the event loop free."""
    check_prompt_size(prompt, settings, field)
    if len(prompt) > INLINE_BYTES:
        return tokenizer.encode_unlocked(prompt)
    return tokenizer.encode(prompt)


async def prepare_generate(
    request: Request, tokenizer: ModelTokenizer, settings: MasterSettings, sets: ParameterSets
) -> PreparedRequest:
    """A /generate body read and ``prepare``d, off the event loop when it is long."""
    raw = await read_bytes(request, settings.max_body_bytes)

    def work() -> PreparedRequest:
        inputs, params = validated(json_body(raw), sets.parts)
        return prepare(inputs, params, tokenizer, settings)

    return await off_loop(len(raw), work)


def prepare(
    inputs: str,
    params: GenerateParameters,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    prompt_ids: list[int] | None = None,
) -> PreparedRequest:
    """Check and tokenize a request: its ``inputs`` and ``parameters`` (``prompt_ids``: its
    prompt already tokenized)."""
    if params.max_new_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"parameters.max_new_tokens: {params.max_new_tokens} exceeds this master's maximum "
            f"of {settings.max_new_tokens}",
            code="invalid_field",
        )
    if prompt_ids is None:
        prompt_ids = encode_prompt(inputs, tokenizer, settings)
    prompt_tokens = len(prompt_ids)
    if prompt_tokens == 0:
        raise BadRequest("inputs: the prompt is empty", code="invalid_field")
    if prompt_tokens + params.max_new_tokens > settings.max_req_total_len:
        raise BadRequest(
            f"inputs: {prompt_tokens} prompt tokens + max_new_tokens {params.max_new_tokens} "
            f"exceed max_req_total_len {settings.max_req_total_len}",
            code="invalid_field",
        )
    # refused here when no accepted release can carry it; else at pairing, if the pair can't
    run = params.for_run()
    refused = run.refusals(settings.lightllm_versions)
    if len(refused) == len(settings.lightllm_versions):
        versions = sorted(settings.lightllm_versions)
        raise BadRequest(
            f"parameters.{refused[versions[0]]}: LightLLM {', '.join(versions)} nodes cannot "
            "take it (their requests have no field for it)",
            code="unsupported_field",
        )
    if params.allowed_token_ids or params.logit_bias:
        check_vocabulary(params, tokenizer.vocab_size)
    stop_ids = run.stop_token_ids(tokenizer)
    if stop_ids and any(len(ids) > 256 for ids in stop_ids):
        raise BadRequest(
            "parameters.stop_sequences: a stop sequence is over 256 tokens", code="invalid_field"
        )
    blocks = (
        prefix_blocks(prompt_ids)
        if reads_prefixes(settings.prefill_policy, settings.decode_policy)
        else ()
    )
    view = RequestView(prompt_tokens, params.max_new_tokens, blocks)
    return PreparedRequest(inputs, prompt_tokens, run, stop_ids, view)


def check_vocabulary(params: GenerateParameters, vocab: int) -> None:
    """400 naming the field of a token id the model's vocabulary does not have."""
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


def generate_stream_endpoint(
    service: GenerateService, tokenizer: ModelTokenizer, settings: MasterSettings
) -> SseEndpoint:
    """LightLLM's POST /generate_stream, served on the hot path (see hot_path.py)."""

    events = LightLLMStream()
    sets = ParameterSets()

    async def open_run(request: Request) -> Opened:
        prepared = await prepare_generate(request, tokenizer, settings, sets)
        return service.run("generate_stream", prepared), events

    return SseEndpoint(open_run)


def client_router(
    service: GenerateService, pool: NodePool, tokenizer: ModelTokenizer, settings: MasterSettings
) -> APIRouter:
    router = APIRouter()
    sets = ParameterSets()

    @router.post("/generate")
    async def generate(request: Request) -> Response:
        prepared = await prepare_generate(request, tokenizer, settings, sets)
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
