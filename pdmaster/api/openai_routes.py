"""OpenAI-compatible client API: /v1/completions, /v1/chat/completions and /v1/models.

Each request becomes the same ``PreparedRequest`` as LightLLM's /generate (through
``prepare``, so limits and stop-sequence handling are shared) and runs as one
``RequestRun`` (admission, retries, deadlines, metrics), like LightLLM's endpoints.
Errors are the project's body plus OpenAI's ``param``; a client that goes away aborts the
request on both nodes.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from pdmaster.api.hot_path import Opened, SseEndpoint
from pdmaster.api.lightllm_routes import (
    encode_prompt,
    off_loop,
    parse_json,
    prepare,
    read_bytes,
    read_prompt_body,
)
from pdmaster.api.openai_relay import (
    ChatFormat,
    CompletionFormat,
    Generation,
    OpenAIStream,
    error_body,
)
from pdmaster.api.openai_schemas import (
    OPENAI_NAMES,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from pdmaster.api.service import ClientDisconnected, GenerateService
from pdmaster.api.text_request import output_room
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.errors import ApiError, BadRequest, NotFound, PayloadTooLarge
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from pdmodel.tokenizer import ModelTokenizer
from pdwire.client import GenerateRequest


def served_model_name(settings: MasterSettings) -> str:
    return settings.served_model_name or Path(settings.model_dir).resolve().name


def accepted_model_names(settings: MasterSettings) -> set[str]:
    """The served name, and the model directory as given or resolved: vLLM's default model
    name is the path it loaded, and LightLLM's benchmark client sends its tokenizer path."""
    names = {served_model_name(settings)}
    for path in (str(settings.model_dir), str(Path(settings.model_dir).resolve())):
        names |= {path, path.rstrip("/"), path.rstrip("/") + "/"}
    return names


def check_model(model: str | None, accepted: set[str], served: str) -> None:
    """A request naming another model is a 404, as in vLLM; one naming none gets ours."""
    if model is not None and model not in accepted:
        raise NotFound(
            f"model: the model {model!r} does not exist; this master serves {served!r}",
            code="model_not_found",
        )


def in_openai_terms(exc: ApiError, prompt_field: str, max_field: str) -> ApiError:
    """``prepare``'s error, naming the OpenAI fields instead of LightLLM's."""
    message = exc.message
    for old, new in (
        ("parameters.max_new_tokens", max_field),
        ("max_new_tokens", max_field),
        *((f"parameters.{name}", openai) for name, openai in OPENAI_NAMES.items()),
        ("parameters.", ""),
    ):
        message = message.replace(old, new)
    if message.startswith("inputs:"):
        message = prompt_field + message[len("inputs") :]
    return type(exc)(message, code=exc.code)


def openai_endpoints(
    service: GenerateService,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    chat_template: ChatTemplate | None = None,
) -> dict[str, SseEndpoint]:
    """/v1/completions and /v1/chat/completions, served on the hot path (see hot_path.py)."""
    template = chat_template or load_chat_template(settings.model_dir)
    model_name = served_model_name(settings)
    model_names = accepted_model_names(settings)

    def prepared(
        body: SamplingFields,
        prompt: str,
        limit: int | None,
        *,
        prompt_field: str,
        max_field: str,
        add_special_tokens: bool,
    ) -> PreparedRequest:
        prompt_ids = None
        if limit is None:  # OpenAI's chat default: as many tokens as the context has left
            prompt_ids = encode_prompt(prompt, tokenizer, settings, prompt_field)
            limit = output_room(len(prompt_ids), settings, prompt_field)
        params = body.generate_parameters(limit, add_special_tokens, max_field)
        request = GenerateRequest(inputs=prompt, parameters=params)
        try:
            return prepare(request, tokenizer, settings, prompt_ids)
        except (BadRequest, PayloadTooLarge) as exc:
            raise in_openai_terms(exc, prompt_field, max_field) from None

    async def respond(
        request: Request,
        body: SamplingFields,
        req: PreparedRequest,
        fmt: CompletionFormat,
        endpoint: str,
    ) -> Opened:
        run = service.run(endpoint, req)
        if body.stream:
            return run, OpenAIStream(Generation(req.prompt_tokens, body.stop, False), fmt)
        gen = Generation(req.prompt_tokens, body.stop)
        try:
            await run.run_to_end(request, gen.add, lambda: gen.done)
        except ClientDisconnected:
            return Response(status_code=499)
        return Response(orjson.dumps(fmt.body(gen)), media_type="application/json")

    def completion(raw: bytes) -> tuple[CompletionRequest, PreparedRequest]:
        body = parse_json(raw, CompletionRequest)
        body.check_supported()
        check_model(body.model, model_names, model_name)
        req = prepared(
            body,
            body.prompt_text(),
            body.max_tokens,
            prompt_field="prompt",
            max_field="max_tokens",
            add_special_tokens=True,
        )
        return body, req

    def chat(raw: bytes) -> tuple[ChatCompletionRequest, PreparedRequest]:
        body = parse_json(raw, ChatCompletionRequest)
        body.check_supported()
        check_model(body.model, model_names, model_name)
        try:
            prompt = template.render([m.for_template() for m in body.messages])
        except ChatTemplateError as exc:
            raise BadRequest(f"messages: {exc}", code="invalid_field") from None
        req = prepared(
            body,
            prompt,
            body.output_limit,
            prompt_field="messages",
            max_field=body.max_tokens_field,
            add_special_tokens=template.add_special_tokens,
        )
        return body, req

    async def completions(request: Request) -> Opened:
        raw = await read_bytes(request, settings.max_body_bytes)
        body, req = await off_loop(len(raw), partial(completion, raw))
        fmt = CompletionFormat(model_name, body.stream_options.include_usage)
        return await respond(request, body, req, fmt, "completions")

    async def chat_completions(request: Request) -> Opened:
        raw = await read_prompt_body(request, settings, "messages")
        body, req = await off_loop(len(raw), partial(chat, raw))
        fmt = ChatFormat(model_name, body.stream_options.include_usage)
        return await respond(request, body, req, fmt, "chat_completions")

    return {
        "/v1/completions": SseEndpoint(completions, error_body),
        "/v1/chat/completions": SseEndpoint(chat_completions, error_body),
    }


def openai_router(settings: MasterSettings) -> APIRouter:
    """/v1/models (the completions endpoints are ``openai_endpoints``)."""
    model_name = served_model_name(settings)
    started = int(time.time())
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict[str, object]:
        model = {
            "id": model_name,
            "object": "model",
            "created": started,
            "owned_by": "pdctl",
            "max_model_len": settings.max_req_total_len,  # as LightLLM and vLLM list it
        }
        return {"object": "list", "data": [model]}

    return router
