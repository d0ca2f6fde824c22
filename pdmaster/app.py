"""Builds a master's FastAPI app from its settings and dependencies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pdmaster.api.admin_routes import admin_router
from pdmaster.api.anthropic_routes import anthropic_router, messages_endpoint
from pdmaster.api.hot_path import HotPathApp, error_response
from pdmaster.api.info_routes import info_router
from pdmaster.api.lightllm_routes import client_router, generate_stream_endpoint
from pdmaster.api.openai_routes import openai_endpoints, openai_router, served_model_name
from pdmaster.api.request_id import RequestIdMiddleware
from pdmaster.api.responses_routes import responses_endpoint
from pdmaster.api.service import GenerateService
from pdmaster.cluster.link import ConfigServerLink
from pdmaster.dispatch.ids import IdSource, LocalIdSource
from pdmaster.dispatch.session import PDDispatcher
from pdmaster.errors import ApiError
from pdmaster.metrics import MasterMetrics
from pdmaster.nodes.breaker import CircuitBreaker
from pdmaster.nodes.load_poller import TokenLoadPoller
from pdmaster.nodes.pool import NodePool
from pdmaster.nodes.routes import node_router
from pdmaster.nodes.tracking import RequestTable
from pdmaster.routing.admission import Admission
from pdmaster.routing.policies import Policy, make_policy
from pdmaster.routing.selection import PairSelector
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import load_chat_template
from pdmodel.tokenizer import ModelTokenizer
from pdwire.lightllm import LightLLMCodec
from pdwire.peers import NetworkAllowlist
from pdwire.sse import compiled_events

log = logging.getLogger(__name__)
DEADLINE_SWEEP_S = 0.1  # how late a deadline may fire


def create_app(
    settings: MasterSettings,
    *,
    tokenizer: ModelTokenizer | None = None,
    ids: IdSource | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> HotPathApp:
    """The master's ASGI app: FastAPI for every route, with the streaming hot path in front."""
    tokenizer = tokenizer or ModelTokenizer.from_model_dir(settings.model_dir)
    codecs = {v: LightLLMCodec(v, share_statuses=True) for v in sorted(settings.lightllm_versions)}
    if not all(codec.token_packs_accelerated for codec in codecs.values()):
        logging.getLogger(__name__).warning(
            "pdwire._tokenpacks is not built (no C compiler at install?): token packs are "
            "decoded in Python, several times slower per token; reinstall with gcc"
        )
    if compiled_events() is None:
        log.warning(
            "pdwire._sse is not built (no C compiler at install?): client events are written "
            "in Python, slower per token; reinstall with gcc"
        )
    pool = NodePool(
        clock,
        lambda: CircuitBreaker(clock, settings.breaker_failures, settings.breaker_open_s),
        settings.load_max_age_s,
    )
    table = RequestTable(clock, compiled=settings.compiled_relay)
    if settings.compiled_relay and table.lane_type is None:
        log.warning(
            "pdmaster._lane is not built, or older than this tree (no C compiler at install? "
            "not rebuilt after an update?): tokens are relayed to streams by the Python chain, "
            "slower per token; reinstall with gcc"
        )

    def policy(name: str) -> Policy:
        return make_policy(
            name,
            settings.node_capacity_tokens,
            affinity_load_factor=settings.affinity_load_factor,
            affinity_slack_tokens=settings.affinity_slack_tokens,
        )

    selector = PairSelector(pool, policy(settings.prefill_policy), policy(settings.decode_policy))
    admission = Admission(settings.max_inflight, settings.max_queue, settings.queue_timeout_s)
    metrics = MasterMetrics(pool, admission, table)
    link = _config_server_link(settings, pool, admission)
    if ids is None:
        ids = link.ids if link else LocalIdSource()
    dispatcher = PDDispatcher(
        codecs,
        selector,
        table,
        ids,
        lambda: settings.node_id,
        settings.dispatch,
        clock,
        observer=metrics,
    )
    service = GenerateService(dispatcher, admission, metrics, clock)
    allowlist = NetworkAllowlist(settings.allow_cidrs)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if allowlist.open:
            log.warning(
                "node endpoints (/pd_register, /kv_move_status) accept every peer; "
                "restrict them with --allow-cidr"
            )
        tasks = [asyncio.create_task(_expire_waits(table, clock), name="deadline-sweeper")]
        async with httpx.AsyncClient(timeout=settings.token_load_poll_s or 1.0) as client:
            if settings.token_load_poll_s > 0:
                poller = TokenLoadPoller(pool, client, settings.token_load_poll_s)
                tasks.append(asyncio.create_task(poller.run(), name="token-load-poller"))
            try:
                async with link or contextlib.nullcontext():
                    yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if link is not None:
                    await link.client.aclose()

    app = FastAPI(title="pdctl master", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestIdMiddleware)
    template = load_chat_template(settings.model_dir)
    model_name = served_model_name(settings)
    app.include_router(client_router(service, pool, tokenizer, settings))
    app.include_router(info_router(tokenizer, settings, model_name))
    app.include_router(openai_router(settings))
    app.include_router(anthropic_router(tokenizer, settings, template))
    app.include_router(
        node_router(
            pool,
            table,
            codecs,
            settings.registration_timeout_s,
            settings.heartbeat_timeout_s,
            allowlist.allows,
        )
    )
    app.include_router(admin_router(pool, settings.admin_token))

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/token_load")
    async def token_load() -> dict[str, object]:
        return {
            "running_requests": admission.inflight,
            "queued_requests": admission.queued,
            "nodes": {
                str(n.node_id): {"role": n.info.mode, "reported_usage": pool.reported_usage(n)}
                for n in pool.nodes()
            },
        }

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if exc.status >= 500:
            log.warning("request %s failed: %s", _request_id(request), exc.message)
        status, headers, body = error_response(exc)
        return Response(
            body, status_code=status, headers={k.decode(): v.decode() for k, v in headers}
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"])
        message = f"{field}: {first['msg']}"
        body = {
            "error": {"type": "invalid_request_error", "code": "invalid_field", "message": message}
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """An unknown route (404) or method (405), in our error body rather than FastAPI's."""
        route = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            error = {"type": "not_found", "code": "no_route", "message": f"no route {route}"}
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow", "")
            message = f"method not allowed: {route} (allowed: {allowed})"
            error = {"type": "method_not_allowed", "code": "method_not_allowed", "message": message}
        else:
            message = str(exc.detail)
            error = {"type": "http_error", "code": f"http_{exc.status_code}", "message": message}
        return JSONResponse({"error": error}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s: unexpected error", _request_id(request))
        message = f"{type(exc).__name__}: {exc}"
        body = {"error": {"type": "internal_error", "code": "internal_error", "message": message}}
        return JSONResponse(body, status_code=500)

    text_api = (service, tokenizer, settings, template, model_name)
    return HotPathApp(
        app,
        {
            "/generate_stream": generate_stream_endpoint(service, tokenizer, settings),
            **openai_endpoints(service, tokenizer, settings, template),
            "/v1/messages": messages_endpoint(*text_api),
            "/v1/responses": responses_endpoint(*text_api),
        },
    )


def _config_server_link(
    settings: MasterSettings, pool: NodePool, admission: Admission
) -> ConfigServerLink | None:
    if settings.config_server is None:
        return None
    return ConfigServerLink(
        httpx.AsyncClient(),
        settings.config_server,
        settings.node_id,
        settings.public_address,
        pool,
        admission,
        register_token=settings.register_token,
        lease_ttl_s=settings.lease_ttl_s,
    )


async def _expire_waits(table: RequestTable, clock: Callable[[], float]) -> None:
    while True:
        await asyncio.sleep(DEADLINE_SWEEP_S)
        table.expire(clock())


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "-")
