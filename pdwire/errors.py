"""Errors of the wire layer.

WireError                  anything wrong with a message on the wire
+-- ForbiddenGlobalError   a pickle names a class or function outside the allowlist
+-- MalformedMessageError  the message decodes but is not what the protocol says
    +-- FrameLimitError    the message would cost more than the decoder's limits allow
"""

from __future__ import annotations


class WireError(Exception):
    """A message on the wire could not be accepted."""


class ForbiddenGlobalError(WireError):
    """A pickle referenced a global that is not one of LightLLM's wire classes."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"pickle references forbidden global {module}.{name}")
        self.module = module
        self.name = name


class MalformedMessageError(WireError):
    """A message decoded but its shape or content breaks the protocol."""


class FrameLimitError(MalformedMessageError):
    """A message exceeds a bound on size, nesting, values or memo entries."""
