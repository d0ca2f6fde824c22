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
from typing import NamedTuple

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from pdmaster.api.hot_path import Opened, SseEndpoint
from pdmaster.api.lightllm_routes import (
    encode_prompt,
    json_body,
    off_loop,
    prepare,
    read_bytes,
    read_prompt_body,
    validated,
)
from pdmaster.api.openai_relay import (
    ChatFormat,
    CompletionFormat,
    Generation,
    OpenAIStream,
    RandomHex,
    StreamEvents,
    error_body,
)
from pdmaster.api.openai_schemas import (
    OPENAI_NAMES,
    ChatCompletionRequest,
    ChatMessages,
    CompletionRequest,
    KnownFields,
    SamplingFields,
    prompt_text,
)
from pdmaster.api.service import ClientDisconnected, GenerateService
from pdmaster.api.text_request import output_room
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.errors import ApiError, BadRequest, NotFound, PayloadTooLarge
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from pdmodel.tokenizer import ModelTokenizer
from pdwire.client import GenerateParameters
from pdwire.sse import compiled_text_chunk


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


class Checked(NamedTuple):
    """What a request's fields other than its prompt came to; shared by the requests that
    send the same fields (``KnownFields``), so ``body`` is kept without its prompt."""

    body: SamplingFields
    params: GenerateParameters | None  # None: they depend on the prompt's length

    @property
    def stream(self) -> bool:
        return self.body.stream

    @property
    def include_usage(self) -> bool:
        return self.body.stream_options.include_usage


class OpenAIRequests:
    """/v1/completions and /v1/chat/completions bodies checked into ``PreparedRequest``s.

    A body whose fields other than its prompt were seen before (``KnownFields``) has only
    its prompt checked: the rest comes to what it came to then.
    """

    def __init__(
        self, tokenizer: ModelTokenizer, settings: MasterSettings, template: ChatTemplate
    ) -> None:
        self._tokenizer = tokenizer
        self._settings = settings
        self._template = template
        self._model_name = served_model_name(settings)
        self._model_names = accepted_model_names(settings)
        self._completions: KnownFields[Checked] = KnownFields("prompt")
        self._chats: KnownFields[Checked] = KnownFields("messages")

    def completion(self, raw: bytes) -> tuple[Checked, PreparedRequest]:
        data = json_body(raw)
        key = self._completions.key(data) if type(data) is dict else None
        known = None if key is None else self._completions.get(key)
        if known is not None and known.params is not None:
            return known, self._prepare(known.params, prompt_text(data["prompt"]), "prompt")
        body = validated(data, CompletionRequest.model_validate)
        body.check_supported()
        check_model(body.model, self._model_names, self._model_name)
        prompt = body.prompt_text()
        params = body.generate_parameters(body.max_tokens, True, "max_tokens")
        req = self._prepare(params, prompt, "prompt")
        checked = Checked(body.model_copy(update={"prompt": ""}), params)
        if key is not None:
            self._completions.keep(key, checked)
        return checked, req

    def chat(self, raw: bytes) -> tuple[Checked, PreparedRequest]:
        data = json_body(raw)
        key = self._chats.key(data) if type(data) is dict else None
        known = None if key is None else self._chats.get(key)
        if known is None:
            body = validated(data, ChatCompletionRequest.model_validate)
            body.check_supported()
            check_model(body.model, self._model_names, self._model_name)
            messages = body.messages
        else:
            assert isinstance(known.body, ChatCompletionRequest)
            body = known.body
            only = validated({"messages": data["messages"]}, ChatMessages.model_validate)
            messages = only.messages
        try:
            prompt = self._template.render([m.for_template() for m in messages])
        except ChatTemplateError as exc:
            raise BadRequest(f"messages: {exc}", code="invalid_field") from None
        max_field = body.max_tokens_field
        params = None if known is None else known.params
        prompt_ids = None
        if params is None:
            limit = body.output_limit
            if limit is None:  # OpenAI's default: as many tokens as the context has left
                prompt_ids = encode_prompt(prompt, self._tokenizer, self._settings, "messages")
                limit = output_room(len(prompt_ids), self._settings, "messages")
            add_special_tokens = self._template.add_special_tokens
            params = body.generate_parameters(limit, add_special_tokens, max_field)
        req = self._prepare(params, prompt, "messages", max_field, prompt_ids)
        if known is None:
            known = Checked(body.model_copy(update={"messages": []}), params)
            if key is not None:
                self._chats.keep(key, known if body.output_limit else known._replace(params=None))
        return known, req

    def _prepare(
        self,
        params: GenerateParameters,
        prompt: str,
        prompt_field: str,
        max_field: str = "max_tokens",
        prompt_ids: list[int] | None = None,
    ) -> PreparedRequest:
        try:
            return prepare(prompt, params, self._tokenizer, self._settings, prompt_ids)
        except (BadRequest, PayloadTooLarge) as exc:
            raise in_openai_terms(exc, prompt_field, max_field) from None


def openai_endpoints(
    service: GenerateService,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    chat_template: ChatTemplate | None = None,
) -> dict[str, SseEndpoint]:
    """/v1/completions and /v1/chat/completions, served on the hot path (see hot_path.py)."""
    template = chat_template or load_chat_template(settings.model_dir)
    model_name = served_model_name(settings)
    requests = OpenAIRequests(tokenizer, settings, template)
    ids = RandomHex()
    text_chunk = compiled_text_chunk()
    events = {
        (kind, usage): StreamEvents(kind(model_name, usage), text_chunk)
        for kind in (CompletionFormat, ChatFormat)
        for usage in (False, True)
    }

    async def respond(
        request: Request,
        checked: Checked,
        req: PreparedRequest,
        kind: type[CompletionFormat],
        endpoint: str,
    ) -> Opened:
        run = service.run(endpoint, req)
        stops = req.parameters.stop_sequences
        if checked.stream:
            shapes = events[kind, checked.include_usage]
            stream = OpenAIStream(
                Generation(req.prompt_tokens, stops, False), shapes, shapes.new_lead(ids)
            )
            return run, stream
        fmt = kind(model_name, checked.include_usage, ids)
        gen = Generation(req.prompt_tokens, stops)
        try:
            await run.run_to_end(request, gen.add, lambda: gen.done)
        except ClientDisconnected:
            return Response(status_code=499)
        return Response(orjson.dumps(fmt.body(gen)), media_type="application/json")

    async def completions(request: Request) -> Opened:
        raw = await read_bytes(request, settings.max_body_bytes)
        checked, req = await off_loop(len(raw), partial(requests.completion, raw))
        return await respond(request, checked, req, CompletionFormat, "completions")

    async def chat_completions(request: Request) -> Opened:
        raw = await read_prompt_body(request, settings, "messages")
        checked, req = await off_loop(len(raw), partial(requests.chat, raw))
        return await respond(request, checked, req, ChatFormat, "chat_completions")

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
