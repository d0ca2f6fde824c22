"""Shared by the chat-style APIs (Anthropic's Messages, OpenAI's Responses): a rendered text
prompt and its sampling choices become a ``PreparedRequest`` through LightLLM's ``prepare``,
so limits and stop sequences are checked once for every endpoint; errors name the
caller's own fields.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from pdmaster.api.lightllm_routes import Unprocessable, parse_json, prepare
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.errors import BadRequest, PayloadTooLarge
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import ChatTemplate, ChatTemplateError
from pdmodel.tokenizer import ModelTokenizer
from pdwire.client import GenerateParameters

M = TypeVar("M", bound=BaseModel)

# Longest first: the names ``prepare`` uses, in the order they must be replaced.
_LIGHTLLM_NAMES = ("parameters.max_new_tokens", "parameters.stop_sequences", "max_new_tokens")


def parse_body(raw: bytes, model: type[M]) -> M:
    """``parse_json``, with schema errors as 400: these APIs answer 400 for any bad field."""
    try:
        return parse_json(raw, model)
    except Unprocessable as exc:
        raise BadRequest(exc.message, code=exc.code) from None


def render(template: ChatTemplate, messages: list[dict[str, Any]], field: str) -> str:
    """The prompt; a last assistant turn is continued (the answer starts from its text)."""
    head, last = messages, None
    if messages and messages[-1]["role"] == "assistant":
        head, last = messages[:-1], messages[-1]["content"]
    try:
        prompt = template.render(head)
    except ChatTemplateError as exc:
        raise BadRequest(f"{field}: {exc}", code="invalid_field") from None
    return prompt + (last or "")


def sampling(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stops: list[str],
    add_special_tokens: bool,
) -> GenerateParameters:
    """LightLLM's parameters; temperature 0 means greedy, top_k 0 means off."""
    try:
        return GenerateParameters(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            top_p=top_p,
            top_k=top_k or -1,
            stop_sequences=stops,
            add_special_tokens=add_special_tokens,
        )
    except ValidationError as exc:  # the schemas bound every field; this is a backstop
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{field}: {first['msg']}", code="invalid_field") from None


def prepare_text(
    prompt: str,
    params: GenerateParameters,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    names: dict[str, str],
    prompt_ids: list[int] | None = None,
) -> PreparedRequest:
    """``prepare``; its errors name ``names[x]`` for LightLLM's ``x`` (``inputs`` too)."""
    try:
        return prepare(prompt, params, tokenizer, settings, prompt_ids)
    except (BadRequest, PayloadTooLarge) as exc:
        message = exc.message
        for old in _LIGHTLLM_NAMES:
            if old in names:
                message = message.replace(old, names[old])
        if message.startswith("inputs:"):
            message = names["inputs"] + message[len("inputs") :]
        raise type(exc)(message, code=exc.code) from None


def output_room(prompt_tokens: int, settings: MasterSettings, field: str) -> int:
    """The output limit when the client sets none: what the context has left, capped."""
    room = settings.max_req_total_len - prompt_tokens
    if room < 1:
        raise BadRequest(
            f"{field}: {prompt_tokens} prompt tokens leave no room for output "
            f"within max_req_total_len {settings.max_req_total_len}",
            code="invalid_field",
        )
    return min(settings.max_new_tokens, room)


def sse_event(name: bytes, data: dict[str, Any]) -> bytes:
    """One named server-sent event (``event:`` and ``data:`` lines)."""
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"
