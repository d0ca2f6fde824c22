from __future__ import annotations

from pdmaster.nodes.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_closed_to_open_after_consecutive_failures() -> None:
    breaker = CircuitBreaker(Clock(), failure_threshold=3, open_s=10)
    breaker.record(False)
    breaker.record(False)
    assert breaker.state is BreakerState.CLOSED and breaker.allows()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN and not breaker.allows()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(Clock(), failure_threshold=2)
    breaker.record(False)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state is BreakerState.CLOSED


def test_open_to_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=1, open_s=10)
    breaker.record(False)
    clock.now = 9.9
    assert not breaker.allows()
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.on_dispatch()
    assert not breaker.allows()  # only one probe at a time


def test_half_open_to_closed_when_the_probe_succeeds() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=1, open_s=1)
    breaker.record(False)
    clock.now = 1
    breaker.on_dispatch()
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


def test_half_open_to_open_when_the_probe_fails() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=5, open_s=1)
    for _ in range(5):
        breaker.record(False)
    clock.now = 1
    breaker.on_dispatch()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    clock.now = 1.5
    assert not breaker.allows()


def test_failures_that_may_not_open_keep_it_closed() -> None:
    breaker = CircuitBreaker(Clock(), failure_threshold=1)
    for _ in range(10):
        breaker.record(False, may_open=False)
    assert breaker.state is BreakerState.CLOSED
