"""Builds a master's FastAPI app from its settings and dependencies."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pdmaster.client_routes import client_router
from pdmaster.dispatch import PDDispatcher
from pdmaster.errors import ApiError
from pdmaster.ids import LocalIdSource
from pdmaster.node_pool import NodePool
from pdmaster.node_routes import node_router
from pdmaster.openai_routes import openai_router
from pdmaster.selection import PairSelector, RoundRobin
from pdmaster.settings import MasterSettings
from pdmaster.tokenizer import ModelTokenizer
from pdmaster.tracking import RequestTable
from pdwire.lightllm import LightLLMCodec

log = logging.getLogger(__name__)


def create_app(
    settings: MasterSettings,
    *,
    tokenizer: ModelTokenizer | None = None,
    next_group_id: Callable[[], Awaitable[int]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    tokenizer = tokenizer or ModelTokenizer.from_model_dir(settings.model_dir)
    codec = LightLLMCodec(settings.lightllm_version)
    pool = NodePool(clock)
    table = RequestTable()
    selector = PairSelector(pool, RoundRobin(), RoundRobin())
    dispatcher = PDDispatcher(
        codec,
        selector,
        table,
        next_group_id or LocalIdSource().next,
        lambda: settings.node_id,
        settings.dispatch,
        clock,
    )
    app = FastAPI(title="pdctl master", docs_url=None, redoc_url=None)
    app.state.pool = pool
    app.state.table = table
    app.include_router(client_router(dispatcher, pool, tokenizer, settings))
    app.include_router(openai_router(dispatcher, tokenizer, settings))
    app.include_router(node_router(pool, table, codec, settings.registration_timeout_s))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"])
        body = {
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_field",
                "message": f"{field}: {first['msg']}",
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        body = {
            "error": {
                "type": "internal_error",
                "code": "internal_error",
                "message": f"{type(exc).__name__}: {exc}",
            }
        }
        return JSONResponse(body, status_code=500)

    return app
