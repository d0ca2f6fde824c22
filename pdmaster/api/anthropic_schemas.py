"""Request bodies of Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

Text only: a message's content is a string or a list of ``text`` blocks (their
``cache_control`` and ``citations`` are accepted and ignored); any other block type
(``image``, ``document``, ``tool_use``, ``tool_result``, ``thinking``...) is refused with a
400 naming it, as are ``tools``, a ``tool_choice`` that asks for a tool, enabled
``thinking`` and ``output_config.format`` (structured output), until nodes can take them.
Unknown fields are refused (400 naming the field), so a feature this master lacks fails
loudly. Accepted and ignored: ``metadata``, ``service_tier``, ``cache_control`` (a
caching hint), ``speed``, ``inference_geo``, ``diagnostics``, ``output_config.effort``,
``model`` (the answer names the master's served model).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pdmaster.errors import BadRequest

MAX_STOP_SEQUENCES = 10  # what a node's sampling parameters carry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(_Strict):
    user_id: str | None = None


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: Any  # checked by ``block_text``, which names the block at fault


def block_text(blocks: object, field: str) -> str:
    """The text of a string or a list of text blocks; 400 naming the first other block."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequest(
            f"{field}: must be a string or a list of content blocks", code="invalid_field"
        )
    texts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise BadRequest(f"{field}.{i}: must be a content block object", code="invalid_field")
        kind = block.get("type")
        if kind != "text":
            raise BadRequest(
                f"{field}.{i}.type: {kind!r} blocks are not supported; only 'text' blocks",
                code="unsupported_field",
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{field}.{i}.text: must be a string", code="invalid_field")
        unknown = set(block) - {"type", "text", "cache_control", "citations"}
        if unknown:
            raise BadRequest(
                f"{field}.{i}.{sorted(unknown)[0]}: not supported in a text block",
                code="invalid_field",
            )
        texts.append(text)
    return "\n".join(texts)


class PromptFields(_Strict):
    """What both endpoints read to build the prompt."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: Any = None  # a string or text blocks, checked by ``block_text``
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None

    def check_supported(self) -> None:
        if self.tools:
            raise BadRequest("tools: tool use is not supported", code="unsupported_field")
        if self.tool_choice is not None and self.tool_choice.get("type") not in ("auto", "none"):
            raise BadRequest(
                "tool_choice: only 'auto' and 'none' are supported (no tools)",
                code="unsupported_field",
            )
        if self.thinking is not None and self.thinking.get("type") != "disabled":
            raise BadRequest(
                "thinking: extended thinking is not supported", code="unsupported_field"
            )
        if self.output_config and self.output_config.get("format") is not None:
            raise BadRequest(
                "output_config.format: structured output is not supported",
                code="unsupported_field",
            )

    def chat(self) -> list[dict[str, Any]]:
        """The conversation as chat-template messages (the system prompt first)."""
        out = []
        system = "" if self.system is None else block_text(self.system, "system")
        if system:
            out.append({"role": "system", "content": system})
        for i, message in enumerate(self.messages):
            text = block_text(message.content, f"messages.{i}.content")
            out.append({"role": message.role, "content": text})
        return out


class MessagesRequest(PromptFields):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    temperature: float = Field(default=1.0, ge=0.0, le=1.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    metadata: Metadata | None = None
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    diagnostics: dict[str, Any] | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value


class CountTokensRequest(PromptFields):
    pass
