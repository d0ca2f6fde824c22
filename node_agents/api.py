"""The agent's own HTTP API (loopback by default; a bearer token when one is configured).

``GET /status``    the engine's state, counters, health, registration and drain
``POST /drain``    masters stop selecting the node; running requests finish. Body
                   ``{"stop": true}`` stops the engine once nothing is in flight. 202.
``POST /undrain``  masters select the node again (ends a drain; the engine keeps running)
``POST /restart``  stop (if running) and start the engine; ends a drain
``POST /stop``     stop the engine; the agent keeps running and answering
"""

from __future__ import annotations

import hmac
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException


class AgentService(Protocol):
    def status(self) -> dict[str, Any]: ...

    async def drain(self, stop: bool) -> dict[str, Any]: ...

    async def undrain(self) -> dict[str, Any]: ...

    def restart(self) -> dict[str, Any]: ...

    def stop_engine(self) -> dict[str, Any]: ...


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stop: bool = False


class ApiError(Exception):
    def __init__(self, status: int, type_: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.message = status, type_, code, message

    def response(self) -> JSONResponse:
        body = {"error": {"type": self.type, "code": self.code, "message": self.message}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def check_bearer(request: Request, token: str | None) -> None:
    """401 without a bearer token, 403 with a wrong one; open when no token is configured."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "authentication_error", "missing_token", "send Authorization: Bearer")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "permission_error", "wrong_token", "wrong agent token")


def create_app(agent: AgentService, token: str | None) -> FastAPI:
    app = FastAPI(title="pd-node-agent", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return ApiError(400, "invalid_request_error", "invalid_body", message).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(
            exc.status_code, "invalid_request_error", "http", str(exc.detail)
        ).response()

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        try:
            check_bearer(request, token)
        except ApiError as exc:
            return exc.response()
        return await call_next(request)

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return agent.status()

    @app.post("/drain", status_code=202)
    async def drain(body: DrainRequest | None = None) -> dict[str, Any]:
        return await agent.drain(stop=body.stop if body else False)

    @app.post("/undrain")
    async def undrain() -> dict[str, Any]:
        return await agent.undrain()

    @app.post("/restart", status_code=202)
    async def restart() -> dict[str, Any]:
        return agent.restart()

    @app.post("/stop", status_code=202)
    async def stop() -> dict[str, Any]:
        return agent.stop_engine()

    return app
