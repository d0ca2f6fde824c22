"""Errors the config server answers with: the shared API errors (``pdwire.api_errors``);
503 ``ServiceUnavailable`` when the store cannot be reached."""

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

__all__ = [
    "ApiError",
    "BadRequest",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
]
