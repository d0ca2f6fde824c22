"""Errors a master answers a client with, each mapped to one HTTP status and error body:
the shared ones (``pdwire.api_errors``: 400, 401, 403, 404, 413) and the master's own.

ApiError                  {"error": {"type", "code", "message"}} with an HTTP status
+-- Conflict              409 the request contradicts another owner's decision
+-- Overloaded            429 admission queue full (with Retry-After)
+-- NoNodeAvailable       503 no connected node of a role can take the request
+-- NodeFailed            502 a node failed or vanished while serving the request
+-- DeadlineExceeded      504 a wait ran past its deadline
"""

from __future__ import annotations

from pdwire.api_errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "NoNodeAvailable",
    "NodeFailed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Unauthorized",
]


class Conflict(ApiError):
    status = 409
    type = "conflict"


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
