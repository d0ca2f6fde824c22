"""Who may call what: bearer tokens for our API, a peer allowlist for LightLLM's.

LightLLM's masters and nodes cannot send tokens, so its endpoints are guarded by the
caller's address instead (``--allow-cidr``); with no allowlist every peer is accepted.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.requests import HTTPConnection

from config_server.errors import Forbidden, Unauthorized
from pdwire.peers import NetworkAllowlist


def check_bearer(conn: HTTPConnection, tokens: Iterable[str | None], what: str) -> None:
    """Accept any of ``tokens``; open when none is configured. 401 without one, 403 if wrong."""
    accepted = [token for token in tokens if token]
    if not accepted:
        return
    scheme, _, given = conn.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized(f"{what} needs Authorization: Bearer <token>", code="missing_token")
    if not any(hmac.compare_digest(given.encode(), token.encode()) for token in accepted):
        raise Forbidden(f"the bearer token is not valid for {what}", code="wrong_token")


def bearer_is(conn: HTTPConnection, token: str | None) -> bool:
    """Whether the request carries exactly ``token`` (never true when it is None)."""
    if not token:
        return False
    scheme, _, given = conn.headers.get("authorization", "").partition(" ")
    given = given.strip()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def peer_host(conn: HTTPConnection) -> str | None:
    return conn.client.host if conn.client else None


class PeerAllowlist(NetworkAllowlist):
    """Client addresses allowed on LightLLM's endpoints; empty means everyone."""

    def check(self, conn: HTTPConnection) -> None:
        host = conn.client.host if conn.client else None
        if not self.allows(host):
            raise Forbidden(f"peer {host} is not in the allowed networks", code="peer_not_allowed")
