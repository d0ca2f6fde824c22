"""Errors the config server answers with: the shared API errors (``pdwire.api_errors``);
503 ``ServiceUnavailable`` when the store cannot be reached; 409 ``Conflict`` when a live
record belongs to another peer."""

from __future__ import annotations

from pdwire.api_errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
)


class Conflict(ApiError):
    status = 409
    type = "conflict_error"

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
]
