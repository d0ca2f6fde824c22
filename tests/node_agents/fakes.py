"""A clock and a spawner that tests move by hand: transitions without processes or sleeping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from node_agents.spawner import SpawnError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeChild:
    pid: int
    status: int | None = None
    group: bool = True  # other members of the process group still alive
    signals: list[int] = field(default_factory=list)
    dies_on: frozenset[int] = frozenset({15, 9})  # signals that end it (TERM, KILL)

    def poll(self) -> int | None:
        return self.status

    def group_alive(self) -> bool:
        return self.status is None or self.group

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)
        if signum in self.dies_on:
            self.exit(-signum)

    def exit(self, status: int, group_too: bool = True) -> None:
        if self.status is None:
            self.status = status
        if group_too:
            self.group = False


@dataclass
class FakeSpawner:
    children: list[FakeChild] = field(default_factory=list)
    fail_with: str | None = None
    dies_on: frozenset[int] = frozenset({15, 9})

    def spawn(self, argv: list[str], env: Mapping[str, str]) -> FakeChild:
        if self.fail_with:
            raise SpawnError(2, self.fail_with)
        child = FakeChild(pid=100 + len(self.children), dies_on=self.dies_on)
        self.children.append(child)
        return child

    @property
    def last(self) -> FakeChild:
        return self.children[-1]
