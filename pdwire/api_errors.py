"""HTTP API errors shared by the master, the config server and the node agent: each is one
status and one body, ``{"error": {"type", "code", "message"}}`` (``pdwire.api.ErrorBody``).

ApiError               500 unless a subclass says otherwise
+-- BadRequest         400 invalid input (the message names the field)
+-- Unauthorized       401 no bearer token where one is configured
+-- Forbidden          403 wrong token, or a peer outside the allowlist
+-- NotFound           404 unknown node, registration or route
+-- PayloadTooLarge    413 body over the limit
+-- ServiceUnavailable 503 a dependency cannot be reached (retry later)

Each component adds its own (the master's 429, 502, 503 and 504) in its ``errors`` module.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.type

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "code": self.code, "message": self.message}}


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    type = "payload_too_large"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"
