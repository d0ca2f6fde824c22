"""Our JSON API under ``/v1``: leases for masters and node agents, the admin listing, a watch.

``PUT /v1/{masters|nodes}/{id}``     register or renew (RegistrationRequest) -> the record
``DELETE /v1/{masters|nodes}/{id}``  deregister (404 if unknown)
``GET /v1/{masters|nodes}[/{id}]``   records; nodes filter by ``role``, ``state``, ``master``
``GET /v1/watch?revision=N&timeout_s=30``  long-poll for changes after revision N

PUT and DELETE need the register token (or the admin token) when one is configured; the
listings need the admin token; the watch takes either (masters hold the register token).
Every agent and master holds the register token and ids are public, so a live record is
renewed or removed only from the address that registered it (409 otherwise; the admin
token may remove any).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError

from config_server.auth import bearer_is, check_bearer, peer_host
from config_server.errors import BadRequest, PayloadTooLarge
from config_server.registry import Registry, check_id
from config_server.responses import json_response
from config_server.settings import ConfigServerSettings
from pdwire import jsonlimits
from pdwire.api import STATE_PATTERN, RegistrationRequest, decimal

Body = TypeVar("Body", bound=BaseModel)

ROLES = frozenset({"prefill", "decode"})


def v1_router(registry: Registry, settings: ConfigServerSettings) -> APIRouter:
    router = APIRouter(prefix="/v1")
    admin = [settings.admin_token] if settings.admin_token else []
    register = [settings.register_token, settings.admin_token] if settings.register_token else []
    watchers = [settings.admin_token, settings.register_token] if settings.admin_token else []

    for kind, plural in (("master", "masters"), ("node", "nodes")):
        _add_kind_routes(router, registry, settings, kind, plural, admin, register)

    @router.get("/watch")
    async def watch(
        request: Request,
        revision: int = Query(0, ge=0),
        timeout_s: float = Query(30.0, ge=0.0, le=settings.max_watch_timeout_s),
    ) -> Any:
        check_bearer(request, watchers, "GET /v1/watch")
        return json_response(await registry.watch(revision, timeout_s))

    return router


def _add_kind_routes(
    router: APIRouter,
    registry: Registry,
    settings: ConfigServerSettings,
    kind: str,
    plural: str,
    admin: Sequence[str | None],
    register: Sequence[str | None],
) -> None:
    async def put_one(request: Request, record_id: str) -> Any:
        check_bearer(request, register, f"PUT /v1/{plural}")
        check_id(record_id)
        body = await read_registration(request, settings.max_body_bytes)
        return json_response(await registry.register(kind, record_id, body, peer_host(request)))

    async def delete_one(request: Request, record_id: str) -> Any:
        check_bearer(request, register, f"DELETE /v1/{plural}")
        admin = bearer_is(request, settings.admin_token)
        await registry.deregister(kind, record_id, None if admin else peer_host(request))
        return json_response({"deleted": {"kind": kind, "id": record_id}})

    async def get_one(request: Request, record_id: str) -> Any:
        check_bearer(request, admin, f"GET /v1/{plural}")
        return json_response(registry.get(kind, record_id))

    async def list_all(
        request: Request,
        role: str | None = None,
        state: str | None = None,
        master: str | None = None,
    ) -> Any:
        check_bearer(request, admin, f"GET /v1/{plural}")
        roles = parse_list(role, "role", lambda v: v in ROLES, "prefill or decode")
        states = parse_list(state, "state", lambda v: bool(STATE_PATTERN.match(v)), "a state")
        items = registry.list(kind, roles, states, master)
        return json_response({"items": items})

    path = f"/{plural}/{{record_id}}"
    router.add_api_route(path, put_one, methods=["PUT"], name=f"put_{kind}")
    router.add_api_route(path, delete_one, methods=["DELETE"], name=f"delete_{kind}")
    router.add_api_route(path, get_one, methods=["GET"], name=f"get_{kind}")
    router.add_api_route(f"/{plural}", list_all, methods=["GET"], name=f"list_{plural}")


def parse_list(value: str | None, name: str, valid: Any, expected: str) -> set[str] | None:
    """``a,b`` -> {"a", "b"}; None when the filter is absent."""
    if value is None:
        return None
    parts = {part.strip() for part in value.split(",") if part.strip()}
    bad = sorted(part for part in parts if not valid(part))
    if not parts or bad:
        raise BadRequest(
            f"{name} must be a comma-separated list of {expected}, got {value!r}",
            code="invalid_query",
        )
    return parts


async def read_registration(request: Request, max_bytes: int) -> RegistrationRequest:
    # exact big integers (orjson would make them floats); 128-bit ids need 40 digits
    return await read_model(
        request, RegistrationRequest, max_bytes, max_depth=32, max_int_digits=40
    )


async def read_model(
    request: Request,
    model: type[Body],
    max_bytes: int,
    *,
    empty: bytes = b"",
    max_depth: int = 16,
    max_int_digits: int = 39,
) -> Body:
    """A bounded JSON object body (``empty`` stands for no body), validated as ``model``;
    every refusal a 4xx naming its field."""
    body = await read_body(request, max_bytes) or empty
    try:
        raw = jsonlimits.loads(
            body, max_bytes=max_bytes, max_depth=max_depth, max_int_digits=max_int_digits
        )
    except jsonlimits.JsonRefused as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    check_int_range(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc), code="invalid_field") from None


def check_int_range(value: Any) -> None:
    """Integers must fit in 64 bits: JSON readers (and our encoder) cannot hold more."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(item))
        elif isinstance(item, int) and not -(2**63) <= item < 2**64:
            raise BadRequest(
                f"{path}: integer {item} does not fit in 64 bits; send 128-bit ids as strings",
                code="invalid_field",
            )


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (decimal(declared) or 0) > max_bytes:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field: ``ttl_s: Input should be greater than or equal to 1``."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
