"""Node selection policies: pure choices over node views, knowing nothing of prefill/decode.

A policy's ``select(candidates, request)`` reads only its arguments (and, for round robin
and prefix affinity, its own small memory); load and health are inputs, computed by the
caller from the master's in-flight counts and the nodes' own load reports.
"""

from __future__ import annotations

import operator
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

PREFIX_BLOCK_TOKENS = 16


class NodeView(NamedTuple):
    """A node as a policy sees it (a tuple: one is made per candidate per request)."""

    node_id: int
    in_flight: int = 0
    in_flight_tokens: int = 0
    reported_usage: float | None = None  # KV token usage rate the node reported, if fresh

    def load(self, capacity_tokens: int) -> float:
        """Tokens this node is busy with: ours in flight, or what it reports, whichever is more."""
        reported = (self.reported_usage or 0.0) * capacity_tokens
        return max(float(self.in_flight_tokens), reported) + self.in_flight


class RequestView(NamedTuple):
    """A request as a policy sees it (a tuple: one is made per request; a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, ~4x the cost)."""

    prompt_tokens: int
    max_new_tokens: int
    prefix_blocks: tuple[int, ...] = ()  # chained hashes of the prompt's 16-token blocks


def prefix_blocks(token_ids: Sequence[int], block: int = PREFIX_BLOCK_TOKENS) -> tuple[int, ...]:
    """Chained hashes of whole blocks: block i's hash covers tokens [0, (i + 1) * block)."""
    out = []
    h = 0
    for start in range(0, len(token_ids) - block + 1, block):
        h = hash((h, tuple(token_ids[start : start + block])))
        out.append(h)
    return tuple(out)


_node_id = operator.itemgetter(0)  # NodeView.node_id


class Policy(Protocol):
    def select(self, candidates: Sequence[NodeView], request: RequestView) -> NodeView: ...


class RandomPolicy:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, candidates: Sequence[NodeView], request: RequestView) -> NodeView:
        return self._rng.choice(candidates)


class RoundRobinPolicy:
    def __init__(self) -> None:
        self._turn = 0

    def select(self, candidates: Sequence[NodeView], request: RequestView) -> NodeView:
        turn = self._turn
        self._turn = turn + 1
        if len(candidates) == 1:  # nothing to order
            return candidates[0]
        return sorted(candidates, key=_node_id)[turn % len(candidates)]


class LeastLoadPolicy:
    def __init__(self, capacity_tokens: int) -> None:
        self._capacity = capacity_tokens

    def select(self, candidates: Sequence[NodeView], request: RequestView) -> NodeView:
        return min(candidates, key=lambda n: (n.load(self._capacity), n.node_id))


class PowerOfTwoPolicy:
    """Two random candidates, the less loaded wins (no herd on one least-loaded node)."""

    def __init__(self, capacity_tokens: int, rng: random.Random | None = None) -> None:
        self._capacity = capacity_tokens
        self._rng = rng or random.Random()

    def select(self, candidates: Sequence[NodeView], request: RequestView) -> NodeView:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if a.load(self._capacity) <= b.load(self._capacity) else b


@dataclass
class _PrefixIndex:
    """Recent prompt prefixes per node: an LRU of block hashes, bounded in size."""

    max_blocks: int
    blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def matched(self, prefix: tuple[int, ...]) -> int:
        n = 0
        for h in prefix:
            if h not in self.blocks:
                break
            n += 1
        return n

    def remember(self, prefix: tuple[int, ...]) -> None:
        for h in prefix:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)


class PrefixAffinityPolicy:
    """Send a prompt where its prefix was sent before, while that node is not overloaded.

    The node with the longest cached prefix wins only if its load is within
    ``load_factor`` x the least load (plus ``slack_tokens``); otherwise the least loaded
    node takes the request, so a hot prefix cannot pile onto one node.
    """

    def __init__(
        self,
        capacity_tokens: int,
        load_factor: float = 1.5,
        slack_tokens: int = 2048,
        max_blocks_per_node: int = 65536,
    ) -> None:
        self._capacity = capacity_tokens
        self._factor = load_factor
        self._slack = slack_tokens
        self._max_blocks = max_blocks_per_node
        self._index: dict[int, _PrefixIndex] = {}

    def select(self, candidates: Sequence[NodeView], request: RequestView) -> NodeView:
        least = min(candidates, key=lambda n: (n.load(self._capacity), n.node_id))
        bound = least.load(self._capacity) * self._factor + self._slack
        best, best_len = least, 0
        for node in candidates:
            index = self._index.get(node.node_id)
            if index is None or node.load(self._capacity) > bound:
                continue
            matched = index.matched(request.prefix_blocks)
            if matched > best_len:
                best, best_len = node, matched
        self._index.setdefault(best.node_id, _PrefixIndex(self._max_blocks)).remember(
            request.prefix_blocks
        )
        return best

    def forget(self, node_id: int) -> None:
        self._index.pop(node_id, None)


POLICY_NAMES = ("random", "round_robin", "least_load", "power_of_two", "prefix_affinity")
PREFIX_POLICIES = frozenset({"prefix_affinity"})  # those that read RequestView.prefix_blocks


def reads_prefixes(*names: str) -> bool:
    """Whether any of the named policies reads a request's ``prefix_blocks`` (the others
    need not have them hashed: a 2,000-token prompt's took ~0.1 ms)."""
    return not PREFIX_POLICIES.isdisjoint(names)


def make_policy(
    name: str,
    capacity_tokens: int,
    rng_seed: int | None = None,
    affinity_load_factor: float = 1.5,
    affinity_slack_tokens: int = 2048,
) -> Policy:
    rng = random.Random(rng_seed)
    factories: dict[str, Callable[[], Policy]] = {
        "random": lambda: RandomPolicy(rng),
        "round_robin": RoundRobinPolicy,
        "least_load": lambda: LeastLoadPolicy(capacity_tokens),
        "power_of_two": lambda: PowerOfTwoPolicy(capacity_tokens, rng),
        "prefix_affinity": lambda: PrefixAffinityPolicy(
            capacity_tokens, affinity_load_factor, affinity_slack_tokens
        ),
    }
    try:
        return factories[name]()
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}"
        ) from None
