"""A per-node circuit breaker whose only input is the outcome of requests.

CLOSED --(failure_threshold consecutive failures)--> OPEN --(open_s passes)--> HALF_OPEN
HALF_OPEN --(probe succeeds)--> CLOSED;  HALF_OPEN --(probe fails)--> OPEN
Overload is not a failure: callers record only node faults (connection loss, errors,
hand-off and token timeouts).
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED = BreakerState.CLOSED  # read per request: a constant, not the enum class's attribute


class CircuitBreaker:
    def __init__(
        self,
        clock: Callable[[], float],
        failure_threshold: int = 3,
        open_s: float = 10.0,
    ) -> None:
        self._clock = clock
        self._threshold = failure_threshold
        self._open_s = open_s
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._open_s:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    def allows(self) -> bool:
        """May a new request go to this node? (HALF_OPEN lets one probe through.)"""
        if self._state is _CLOSED:  # as nearly always: no clock to read
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probing

    def on_dispatch(self) -> None:
        if self._state is not _CLOSED and self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def record(self, ok: bool, may_open: bool = True) -> None:
        """One outcome; ``may_open=False`` counts the failure but keeps the breaker closed."""
        if ok and self._state is _CLOSED:  # as nearly always (closed: not probing)
            self._failures = 0
            return
        state = self.state
        if ok:
            self._failures = 0
            self._state = BreakerState.CLOSED
            self._probing = False
            return
        self._failures += 1
        if state is BreakerState.HALF_OPEN or (may_open and self._failures >= self._threshold):
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probing = False
