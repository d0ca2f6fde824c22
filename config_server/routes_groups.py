"""``/v1/groups``: multi-node instances' restart generations (see ``pdwire.groups``).

``PUT /v1/groups/{id}``            a rank joins (creates at its generation) or renews
``POST /v1/groups/{id}/restart``   next generation if still at the given one -> the record
``POST /v1/groups/{id}/fatal``     the given generation is FATAL -> the record
``POST /v1/groups/{id}/drain``     every rank drains (``{"stop": true}``: then stops)
``POST /v1/groups/{id}/undrain``   every rank takes requests again
``GET /v1/groups[/{id}]``          records with their state and ranks (node records)

Writes take the register token (agents), or the admin token; reads the admin token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from config_server.auth import check_bearer
from config_server.groups import GroupRegistry
from config_server.responses import json_response
from config_server.routes_v1 import Body, read_model
from config_server.settings import ConfigServerSettings
from pdwire.groups import GroupDrain, GroupFatal, GroupJoin, GroupRestart, GroupUndrain

MAX_GROUP_BODY = 4096  # a group call is a few small fields


def groups_router(groups: GroupRegistry, settings: ConfigServerSettings) -> APIRouter:
    router = APIRouter(prefix="/v1/groups")
    admin = [settings.admin_token] if settings.admin_token else []
    register = [settings.register_token, settings.admin_token] if settings.register_token else []

    async def parse(request: Request, model: type[Body]) -> Body:
        check_bearer(request, register, f"{request.method} /v1/groups")
        return await read_model(request, model, MAX_GROUP_BODY, empty=b"{}")

    @router.put("/{group_id}")
    async def join(request: Request, group_id: str) -> Any:
        return json_response(await groups.join(group_id, await parse(request, GroupJoin)))

    @router.post("/{group_id}/restart")
    async def restart(request: Request, group_id: str) -> Any:
        return json_response(await groups.restart(group_id, await parse(request, GroupRestart)))

    @router.post("/{group_id}/fatal")
    async def fatal(request: Request, group_id: str) -> Any:
        return json_response(await groups.fatal(group_id, await parse(request, GroupFatal)))

    @router.post("/{group_id}/drain")
    async def drain(request: Request, group_id: str) -> Any:
        return json_response(await groups.drain(group_id, await parse(request, GroupDrain)))

    @router.post("/{group_id}/undrain")
    async def undrain(request: Request, group_id: str) -> Any:
        await parse(request, GroupUndrain)
        return json_response(await groups.undrain(group_id))

    @router.get("")
    async def list_all(request: Request) -> Any:
        check_bearer(request, admin, "GET /v1/groups")
        return json_response({"items": groups.list()})

    @router.get("/{group_id}")
    async def get_one(request: Request, group_id: str) -> Any:
        check_bearer(request, admin, "GET /v1/groups")
        return json_response(groups.get(group_id))

    return router
