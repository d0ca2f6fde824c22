"""What a master says about its config server, once rather than at every retry.

The registration's websocket and lease, and the drain watch, each retry on their own.
``ConfigServerStatus`` is what they share:

- an outage (unreachable, or refusing us) is logged when it starts (one WARNING with the
  first error), summarised every ``summary_s`` while it lasts (attempts per task, the
  last error) and when it ends;
- a config server that answers our ``/v1`` routes with a plain 404 is LightLLM's own,
  which has only the websocket registration and id ranges: that is logged once, and the
  lease and the watch stop (``lightllm_only``) while the websocket goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import httpx

log = logging.getLogger(__name__)


def is_lightllm_404(reply: httpx.Response) -> bool:
    """A 404 that is not ours: our config server answers every /v1 route, and its errors
    are ``{"error": {...}}``; LightLLM's FastAPI says ``{"detail": "Not Found"}``."""
    if reply.status_code != 404:
        return False
    try:
        body = reply.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and isinstance(body.get("error"), dict))


class ConfigServerStatus:
    def __init__(self, address: str, clock: Callable[[], float], summary_s: float = 60.0) -> None:
        self._address = address
        self._clock = clock
        self._summary_s = summary_s
        self.lightllm_only = False
        self._down_since: float | None = None
        self._last_summary = 0.0
        self._attempts: Counter[str] = Counter()
        self._last_error = ""

    def lightllm_detected(self) -> None:
        if not self.lightllm_only:
            self.lightllm_only = True
            log.warning(
                "the config server at %s has no /v1 API: it is LightLLM's own. Registering "
                "over its websocket only (no lease, no node drains through it, no /v1 listing)",
                self._address,
            )

    def failed(self, task: str, error: str) -> None:
        """One failed attempt of ``task`` (``websocket``, ``lease``, ``watch``)."""
        now = self._clock()
        self._attempts[task] += 1
        self._last_error = f"{task}: {error}"
        if self._down_since is None:
            self._down_since = self._last_summary = now
            log.warning(
                "config server %s failing (%s); retrying with backoff, a summary every %g s",
                self._address,
                self._last_error,
                self._summary_s,
            )
        elif now - self._last_summary >= self._summary_s:
            self._last_summary = now
            log.warning(
                "config server %s failing for %.0f s: %s; last: %s",
                self._address,
                now - self._down_since,
                self._counts(),
                self._last_error,
            )

    def succeeded(self) -> None:
        if self._down_since is not None:
            log.info(
                "config server %s reachable again after %.0f s (%s)",
                self._address,
                self._clock() - self._down_since,
                self._counts(),
            )
            self._down_since = None
            self._attempts.clear()

    def _counts(self) -> str:
        total = sum(self._attempts.values())
        each = ", ".join(f"{task} {n}" for task, n in sorted(self._attempts.items()))
        return f"{total} failed attempts ({each})"
