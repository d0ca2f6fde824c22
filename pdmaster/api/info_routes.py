"""LightLLM's model and server information endpoints: /tokens, /get_model_name and
/get_server_info (GET or POST, as LightLLM serves them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from pdmaster.api.lightllm_routes import read_json
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
        key: str(value) if isinstance(value, Path) else value
        for key, value in dataclasses.asdict(settings).items()
        if not key.endswith(SECRET_SUFFIXES)
    }
    return {**info, "model_name": model_name, "run_mode": "pd_master"}


def info_router(tokenizer: ModelTokenizer, settings: MasterSettings, model_name: str) -> APIRouter:
    router = APIRouter()

    @router.api_route("/tokens", methods=["GET", "POST"])
    async def tokens(request: Request) -> dict[str, int]:
        body = await read_json(request, TokensRequest, settings.max_body_bytes)
        return {"ntokens": tokenizer.count(body.text)}

    @router.api_route("/get_model_name", methods=["GET", "POST"])
    async def get_model_name() -> dict[str, str]:
        return {"model_name": model_name}

    info = server_info(settings, model_name)

    @router.api_route("/get_server_info", methods=["GET", "POST"])
    async def get_server_info() -> dict[str, Any]:
        return info

    return router
