"""Errors a master answers a client with, each mapped to one HTTP status and error body.

ApiError                  {"error": {"type", "code", "message"}} with an HTTP status
+-- BadRequest            400 invalid input (names the field)
+-- PayloadTooLarge       413 body over the configured limit
+-- NoNodeAvailable       503 no connected node of a role can take the request
+-- NodeFailed            502 a node failed or vanished while serving the request
+-- DeadlineExceeded      504 a wait ran past its deadline
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


class PayloadTooLarge(ApiError):
    status = 413
    type = "payload_too_large"


class NoNodeAvailable(ApiError):
    status = 503
    type = "no_node_available"


class NodeFailed(ApiError):
    status = 502
    type = "node_failed"

    def __init__(self, message: str, code: str | None = None, node: object = None) -> None:
        super().__init__(message, code)
        self.node = node  # the NodeConnection at fault, when known


class DeadlineExceeded(ApiError):
    status = 504
    type = "deadline_exceeded"


class Overloaded(ApiError):
    status = 429
    type = "overloaded"

    def __init__(self, message: str, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "not_found"
