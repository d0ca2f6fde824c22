"""Request body of OpenAI's Responses API (POST /v1/responses), for a stateless master.

Input is a string or a list of message items (``role`` user, assistant, system or
developer; content a string or ``input_text``/``output_text`` parts). Refused with a 400
naming the field: what needs server-side state (``previous_response_id``,
``conversation``, stored ``prompt``s, ``background``), tools (``tools``, a
``tool_choice`` that asks for one, tool-call items), non-text input parts, structured
output (``text.format`` other than ``text``), ``reasoning``, ``include``,
``top_logprobs`` and ``truncation: auto``. Unknown fields are refused. Accepted and
ignored: ``store`` (nothing is stored; answers say ``store: false``), ``user``,
``safety_identifier``, ``prompt_cache_key``, ``service_tier``, ``parallel_tool_calls``,
``max_tool_calls``, ``stream_options``, ``text.verbosity``; ``metadata`` is echoed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pdmaster.errors import BadRequest

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: Any  # a string or message items, checked by ``chat``, which names the item at fault
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)
    previous_response_id: str | None = None
    conversation: Any = None
    prompt: Any = None
    background: bool = False
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] = Field(default_factory=list)
    top_logprobs: int | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    store: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    def check_supported(self) -> None:
        """Raise a 400 naming the first field set to something a stateless master cannot do."""
        refused = [
            ("previous_response_id", self.previous_response_id is not None, "no stored responses"),
            ("conversation", self.conversation is not None, "no stored conversations"),
            ("prompt", self.prompt is not None, "no stored prompts"),
            ("background", self.background, "no background responses"),
            ("tools", bool(self.tools), "tool use is not supported"),
            ("include", bool(self.include), "no extra output data is available"),
            ("top_logprobs", bool(self.top_logprobs), "logprobs are not supported"),
            ("truncation", self.truncation == "auto", "only 'disabled' is supported"),
            ("reasoning", bool(self.reasoning), "reasoning options are not supported"),
        ]
        for field, is_set, why in refused:
            if is_set:
                raise BadRequest(f"{field}: {why} by this master", code="unsupported_field")
        if self.tool_choice not in (None, "auto", "none"):
            raise BadRequest(
                "tool_choice: only 'auto' and 'none' are supported (no tools)",
                code="unsupported_field",
            )
        fmt = (self.text or {}).get("format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise BadRequest(
                "text.format: only {'type': 'text'} is supported", code="unsupported_field"
            )

    def chat(self) -> list[dict[str, Any]]:
        """The conversation as chat-template messages (``instructions`` first, as system)."""
        out = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return [*out, {"role": "user", "content": self.input}]
        if not isinstance(self.input, list):
            raise BadRequest("input: must be a string or a list of items", code="invalid_field")
        for i, item in enumerate(self.input):
            if not isinstance(item, dict):
                raise BadRequest(f"input.{i}: must be an item object", code="invalid_field")
            out.append(_message(item, f"input.{i}"))
        if len(out) == (1 if self.instructions else 0):
            raise BadRequest("input: no messages", code="invalid_field")
        return out


def _message(item: dict[str, Any], field: str) -> dict[str, Any]:
    kind = item.get("type", "message")
    if kind != "message":
        raise BadRequest(
            f"{field}.type: {kind!r} items are not supported; only 'message' items",
            code="unsupported_field",
        )
    role = item.get("role")
    if role not in ROLES:
        raise BadRequest(f"{field}.role: must be one of {', '.join(ROLES)}", code="invalid_field")
    unknown = set(item) - {"type", "role", "content", "id", "status"}
    if unknown:
        raise BadRequest(f"{field}.{sorted(unknown)[0]}: not supported", code="invalid_field")
    content = item.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(_part_text(part, f"{field}.content.{j}") for j, part in enumerate(content))
    else:
        raise BadRequest(
            f"{field}.content: must be a string or a list of text parts", code="invalid_field"
        )
    return {"role": "system" if role == "developer" else role, "content": text}


def _part_text(part: object, field: str) -> str:
    if not isinstance(part, dict):
        raise BadRequest(f"{field}: must be an object", code="invalid_field")
    kind = part.get("type")
    if kind not in TEXT_PARTS:
        raise BadRequest(
            f"{field}.type: {kind!r} parts are not supported; only text parts",
            code="unsupported_field",
        )
    text = part.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{field}.text: must be a string", code="invalid_field")
    return text
