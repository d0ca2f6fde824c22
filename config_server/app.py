"""Builds the config server's FastAPI app from a registry and settings."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from config_server.auth import PeerAllowlist
from config_server.errors import ApiError, BadRequest, NotFound, ServiceUnavailable
from config_server.groups import GroupRegistry
from config_server.metrics import ConfigServerMetrics
from config_server.registry import Registry
from config_server.responses import error_response, json_response
from config_server.routes_groups import groups_router
from config_server.routes_lightllm import lightllm_router
from config_server.routes_v1 import v1_router
from config_server.settings import ConfigServerSettings
from config_server.store.base import CounterExhausted, StoreError
from pdwire.lightllm import LightLLMCodec

log = logging.getLogger(__name__)


def create_app(registry: Registry, settings: ConfigServerSettings) -> FastAPI:
    allowlist = PeerAllowlist(settings.allow_cidrs)
    codec = LightLLMCodec(settings.lightllm_version)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if allowlist.open:
            log.warning(
                "LightLLM endpoints (/pd_master_register, /registered_objects, id ranges) accept "
                "every peer; restrict them with --allow-cidr"
            )
        if settings.register_token is None:
            log.warning("registration is open to anyone: set PDCTL_REGISTER_TOKEN")
        await registry.start()
        try:
            yield
        finally:
            await registry.close()

    app = FastAPI(title="pdctl config server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(
        lightllm_router(
            registry, allowlist, codec, settings.lightllm_ttl_s, settings.register_token
        )
    )
    app.include_router(v1_router(registry, settings))
    app.include_router(groups_router(GroupRegistry(registry), settings))
    metrics = ConfigServerMetrics(registry)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        code = "ids_exhausted" if isinstance(exc, CounterExhausted) else "store_unavailable"
        return error_response(ServiceUnavailable(str(exc), code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body")]
            parts.append(f"{'.'.join(loc) or 'request'}: {error.get('msg')}")
        return error_response(BadRequest("; ".join(parts), code="invalid_query"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"no route {request.url.path}", code="no_route"))
        detail = {"type": "http_error", "code": f"http_{exc.status_code}", "message": exc.detail}
        return json_response({"error": detail}, exc.status_code, exc.headers)
