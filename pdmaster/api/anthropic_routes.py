"""Anthropic's Messages API: POST /v1/messages (streamed on the hot path, or one body) and
POST /v1/messages/count_tokens.

A message runs as one ``RequestRun``, like every endpoint (admission, retries before the
first token, deadlines, abort on disconnect, metrics labelled ``messages``). The
``anthropic-version`` and ``x-api-key`` headers are accepted; the master checks no key.
"""

from __future__ import annotations

from functools import partial

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pdmaster.api.anthropic_relay import MessageEvents, error_body, message_body, message_id
from pdmaster.api.anthropic_schemas import CountTokensRequest, MessagesRequest, PromptFields
from pdmaster.api.hot_path import Opened, SseEndpoint
from pdmaster.api.lightllm_routes import encode_prompt, off_loop, read_prompt_body
from pdmaster.api.openai_relay import Generation
from pdmaster.api.openai_routes import accepted_model_names, check_model, served_model_name
from pdmaster.api.service import ClientDisconnected, GenerateService
from pdmaster.api.text_request import parse_body, prepare_text, render, sampling
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.errors import ApiError
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import ChatTemplate
from pdmodel.tokenizer import ModelTokenizer

ENDPOINT = "messages"
NAMES = {
    "inputs": "messages",
    "parameters.max_new_tokens": "max_tokens",
    "parameters.stop_sequences": "stop_sequences",
    "max_new_tokens": "max_tokens",
}


def _prompt(body: PromptFields, template: ChatTemplate, settings: MasterSettings) -> str:
    """The prompt; 404 for another model than this master's (as its OpenAI API answers)."""
    check_model(body.model, accepted_model_names(settings), served_model_name(settings))
    body.check_supported()
    return render(template, body.chat(), "messages")


def messages_endpoint(
    service: GenerateService,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    template: ChatTemplate,
    model_name: str,
) -> SseEndpoint:
    """POST /v1/messages: a stream on the hot path, or (``"stream": false``) one message."""

    def prepare_message(raw: bytes) -> tuple[MessagesRequest, PreparedRequest]:
        body = parse_body(raw, MessagesRequest)
        params = sampling(
            body.max_tokens,
            body.temperature,
            body.top_p,
            body.top_k,
            body.stop_sequences,
            template.add_special_tokens,
        )
        prompt = _prompt(body, template, settings)
        return body, prepare_text(prompt, params, tokenizer, settings, NAMES)

    async def open_message(request: Request) -> Opened:
        raw = await read_prompt_body(request, settings, "messages")
        body, prepared = await off_loop(len(raw), partial(prepare_message, raw))
        gen = Generation(prepared.prompt_tokens, body.stop_sequences, keep_text=not body.stream)
        run = service.run(ENDPOINT, prepared)
        if body.stream:
            return run, MessageEvents(model_name, gen)
        try:
            await run.run_to_end(request, gen.add, lambda: gen.done)
        except ClientDisconnected:
            return Response(status_code=499)
        answer = message_body(message_id(), model_name, gen)
        return Response(orjson.dumps(answer), media_type="application/json")

    return SseEndpoint(open_message, error_body)


def anthropic_router(
    tokenizer: ModelTokenizer, settings: MasterSettings, template: ChatTemplate
) -> APIRouter:
    router = APIRouter()

    def count(raw: bytes) -> int:
        prompt = _prompt(parse_body(raw, CountTokensRequest), template, settings)
        return len(encode_prompt(prompt, tokenizer, settings, "messages"))

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        try:
            raw = await read_prompt_body(request, settings, "messages")
            tokens = await off_loop(len(raw), partial(count, raw))
        except ApiError as exc:
            return JSONResponse(error_body(exc), status_code=exc.status)
        return JSONResponse({"input_tokens": tokens})

    return router
