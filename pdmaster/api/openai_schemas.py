"""Request bodies of the OpenAI-compatible API: /v1/completions and /v1/chat/completions.

Fields are OpenAI's plus the extensions vLLM and SGLang users send (``top_k``,
``ignore_eos``, ``repetition_penalty``). A JSON ``null`` means the field's default, as in
OpenAI's API. Unknown fields are refused (422 naming the field), as on LightLLM's routes,
so a feature this master lacks (``tools``) fails loudly instead of being dropped. Fields
OpenAI defines but the PD flow cannot honour (``n`` > 1, ``logprobs``, ``echo``,
``suffix``, ``best_of`` > 1) are parsed so that ``check_supported`` can refuse them with a
400 naming the field.

The sampling values go through LightLLM's own parameters (``GenerateParameters``), so
both APIs share one validation: LightLLM's bounds and the wire's, a 400 naming the OpenAI
field. As LightLLM's OpenAI API does, ``response_format`` becomes a guided decoding
constraint (``json_schema`` -> ``guided_json``, ``json_object`` -> LightLLM's built-in
``json`` grammar), and ``logit_bias`` of -100 bans tokens (v1.2.0 nodes' ``invalid_token_ids``);
``seed`` reaches nodes whose requests carry one (v1.2.0).

Accepted and ignored: ``model`` (the answer names the master's served model), ``user``,
and ``stream_options`` when ``stream`` is false.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pdmaster.errors import BadRequest
from pdwire.client import GenerateParameters
from pdwire.sampling import Float32, Int32

T = TypeVar("T")


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class JsonSchemaFormat(OpenAIModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> dict[str, str]:
        """The LightLLM parameter this format becomes, as LightLLM's OpenAI API maps it."""
        if self.type == "json_object":
            return {"guided_grammar": "json"}
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.schema_ is None:
                raise BadRequest(
                    "response_format.json_schema.schema: required for type json_schema",
                    code="invalid_field",
                )
            return {"guided_json": json.dumps(self.json_schema.schema_, separators=(",", ":"))}
        return {}


# GenerateParameters field -> the OpenAI field a client set it with
OPENAI_NAMES = {
    "stop_sequences": "stop",
    "guided_json": "response_format",
    "guided_grammar": "response_format",
}


# The sampling fields LightLLM's parameters take under the same name and meaning.
_PASSED_AS_IS = (
    "top_p",
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "seed",
    "logit_bias",
)


class SamplingFields(OpenAIModel):
    """The fields both endpoints share, and their mapping onto LightLLM's parameters."""

    model: str | None = None
    n: int = 1
    temperature: Float32 = Field(default=1.0, ge=0.0)
    top_p: Float32 = Field(default=1.0, gt=0.0, le=1.0)
    top_k: Int32 = -1
    presence_penalty: Float32 = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: Float32 = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: Float32 = Field(default=1.0, gt=0.0)
    stop: list[str] = Field(default_factory=list, max_length=10)
    stream: bool = False
    stream_options: StreamOptions = Field(default_factory=StreamOptions)
    ignore_eos: bool = False
    seed: int | None = None
    user: str | None = None
    logit_bias: dict[str, float] = Field(default_factory=dict)
    response_format: ResponseFormat | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value < -1:
            raise ValueError("top_k must be -1 or 0 (off) or a positive integer")
        return value or -1

    def check_supported(self) -> None:
        """Raise a 400 naming the first field set to something the PD flow cannot do."""
        if self.n != 1:
            raise BadRequest(f"n: only n=1 is supported, got {self.n}", code="unsupported_field")

    def generate_parameters(
        self, max_new_tokens: int, add_special_tokens: bool, max_field: str = "max_tokens"
    ) -> GenerateParameters:
        """LightLLM's parameters for this request; temperature 0 means greedy, as in OpenAI.

        LightLLM's checks apply here too: a value they refuse is a 400 naming the OpenAI
        field (``max_field`` for the output limit).
        """
        values: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": self.temperature > 0,
            "add_special_tokens": add_special_tokens,
        }
        # A field the client left out is at OpenAI's default, which is LightLLM's too (a
        # test holds them equal): only the fields it sent cost a second validation.
        sent = self.model_fields_set
        if "temperature" in sent:
            values["temperature"] = self.temperature or 1.0
        for name in _PASSED_AS_IS:
            if name in sent:
                values[name] = getattr(self, name)
        if "stop" in sent:
            values["stop_sequences"] = self.stop
        if self.response_format:
            values |= self.response_format.constraint()
        try:
            return GenerateParameters.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first["loc"]]
            name = loc[0] if loc else "body"
            field = max_field if name == "max_new_tokens" else OPENAI_NAMES.get(name, name)
            raise BadRequest(
                f"{'.'.join([field, *loc[1:]])}: {first['msg']}", code="invalid_field"
            ) from None


class CompletionRequest(SamplingFields):
    prompt: Any = Field(description="a string, or a list holding one string")
    max_tokens: int = Field(default=16, ge=1)
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int = 1

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs is not None:
            raise BadRequest("logprobs: not supported", code="unsupported_field")
        if self.echo:
            raise BadRequest("echo: not supported", code="unsupported_field")
        if self.suffix is not None:
            raise BadRequest("suffix: not supported", code="unsupported_field")
        if self.best_of != 1:
            raise BadRequest(
                f"best_of: only best_of=1 is supported, got {self.best_of}",
                code="unsupported_field",
            )

    def prompt_text(self) -> str:
        """The one text prompt; 400 for batches and token-id prompts."""
        return prompt_text(self.prompt)


def prompt_text(prompt: object) -> str:
    """A completion's ``prompt`` as its one text prompt; 400 for batches and token-id prompts."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int | list) for p in prompt):
        raise BadRequest(
            "prompt: token-id prompts are not supported; send the text",
            code="unsupported_field",
        )
    if isinstance(prompt, list) and len(prompt) > 1:
        raise BadRequest(
            f"prompt: one prompt per request is supported, got {len(prompt)}",
            code="unsupported_field",
        )
    raise BadRequest("prompt: must be a string or a list holding one string", code="invalid_field")


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: object) -> object:
        """Content parts of type "text", joined with newlines (as vLLM does)."""
        if not isinstance(value, list):
            return value
        texts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"part {i} is of type {kind!r}; only 'text' parts are supported")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"part {i} has no 'text' string")
            texts.append(part["text"])
        return "\n".join(texts)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates expect it; "developer" is OpenAI's newer "system"."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.content,
        }
        for name in ("name", "tool_call_id", "tool_calls"):
            value = getattr(self, name)
            if value is not None:
                message[name] = value
        return message


class ChatMessages(OpenAIModel):
    """A chat request's ``messages`` alone, checked as ``ChatCompletionRequest`` checks them."""

    messages: list[ChatMessage] = Field(min_length=1)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise BadRequest("logprobs: not supported", code="unsupported_field")
        if self.top_logprobs:
            raise BadRequest("top_logprobs: not supported", code="unsupported_field")

    @property
    def max_tokens_field(self) -> str:
        """The name the client used for the output limit, for error messages."""
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class KnownFields(Generic[T]):
    """What a body's fields other than its prompt came to, for the last ``size`` distinct
    sets of them that passed every check, keyed by their exact JSON.

    Clients send the same few sets again and again, with another prompt each time, and all
    that the fields come to (validation, the checks, LightLLM's parameters) depends on the
    fields alone; keyed by their exact JSON (1, 1.0 and true, 0.0 and -0.0 stay apart), a set
    found here gives what checking it would. A set that fails is never kept: it is refused,
    with the same error, every time. Sets whose JSON is over ``max_key_bytes`` are not kept.
    """

    def __init__(self, prompt_field: str, size: int = 64, max_key_bytes: int = 2048) -> None:
        self._prompt_field = prompt_field
        self._size = size
        self._max_key_bytes = max_key_bytes
        self._known: dict[bytes, T] = {}
        self._lock = threading.Lock()  # long bodies are checked in worker threads

    def key(self, data: dict[str, Any]) -> bytes | None:
        """The key of the fields other than the prompt of ``data`` (a body as ``orjson``
        parsed it); None for a body without a prompt (a null one too) or one not kept."""
        if data.get(self._prompt_field) is None:
            return None
        rest = data.copy()
        del rest[self._prompt_field]
        key = orjson.dumps(rest)
        return key if len(key) <= self._max_key_bytes else None

    def get(self, key: bytes) -> T | None:
        return self._known.get(key)

    def keep(self, key: bytes, value: T) -> None:
        with self._lock:
            if len(self._known) >= self._size and key not in self._known:
                del self._known[next(iter(self._known))]
            self._known[key] = value
