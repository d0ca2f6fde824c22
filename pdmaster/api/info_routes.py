"""LightLLM's model and server information endpoints: /tokens, /get_model_name and
/get_server_info (GET or POST, as LightLLM serves them)."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from pdmaster.api.lightllm_routes import encode_prompt, off_loop, parse_json, read_bytes
from pdmaster.settings import MasterSettings
from pdmodel.tokenizer import ModelTokenizer
from pdwire.client import MultimodalInput

SECRET_SUFFIXES = ("_token", "_secret", "_password", "_key")  # admin_token, register_token


class TokensRequest(BaseModel):
    """LightLLM's /tokens body; ``parameters`` are taken and, as for a PD master, unused."""

    model_config = ConfigDict(extra="forbid")

    text: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    multimodal_params: MultimodalInput | None = None


def server_info(settings: MasterSettings, model_name: str) -> dict[str, Any]:
    """The master's settings as LightLLM answers its start arguments, without the secrets
    (any setting named like one, so that a new one is left out too)."""
    info = {
        key: _json_value(value)
        for key, value in dataclasses.asdict(settings).items()
        if not key.endswith(SECRET_SUFFIXES)
    }
    return {**info, "model_name": model_name, "run_mode": "pd_master"}


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):  # lightllm_versions
        return sorted(value)
    return value


def info_router(tokenizer: ModelTokenizer, settings: MasterSettings, model_name: str) -> APIRouter:
    router = APIRouter()

    def count(raw: bytes) -> int:
        text = parse_json(raw, TokensRequest).text
        return len(encode_prompt(text, tokenizer, settings, "text"))

    @router.api_route("/tokens", methods=["GET", "POST"])
    async def tokens(request: Request) -> dict[str, int]:
        raw = await read_bytes(request, settings.max_body_bytes)
        return {"ntokens": await off_loop(len(raw), partial(count, raw))}

    @router.api_route("/get_model_name", methods=["GET", "POST"])
    async def get_model_name() -> dict[str, str]:
        return {"model_name": model_name}

    info = server_info(settings, model_name)

    @router.api_route("/get_server_info", methods=["GET", "POST"])
    async def get_server_info() -> dict[str, Any]:
        return info

    return router
