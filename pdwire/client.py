"""The client API's request bodies (LightLLM's /generate and /generate_stream)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=16, ge=1)
    min_new_tokens: int = Field(default=1, ge=0)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = -1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    ignore_eos: bool = False
    stop_sequences: list[str] = Field(default_factory=list, max_length=10)
    best_of: int = Field(default=1, ge=1, le=1)
    n: int = Field(default=1, ge=1, le=1)
    return_details: bool = False
    skip_special_tokens: bool = True
    add_special_tokens: bool = True
    add_spaces_between_special_tokens: bool = True
    print_eos_token: bool = False

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("top_k must be -1 (off) or a positive integer")
        return value


class MultimodalInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[dict[str, Any]] = Field(default_factory=list, max_length=0)
    audios: list[dict[str, Any]] = Field(default_factory=list, max_length=0)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    multimodal_params: MultimodalInput | None = None
