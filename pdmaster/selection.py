"""Pair selection: which prefill node and which decode node serve a request."""

from __future__ import annotations

from pdmaster.errors import NoNodeAvailable
from pdmaster.node_pool import NodeConnection, NodePool, Role


class RoundRobin:
    """Cycles through the candidates; stable when nodes join or leave."""

    def __init__(self) -> None:
        self._turn = 0

    def select(self, candidates: list[NodeConnection]) -> NodeConnection:
        node = candidates[self._turn % len(candidates)]
        self._turn += 1
        return node


class PairSelector:
    def __init__(
        self, pool: NodePool, prefill_policy: RoundRobin, decode_policy: RoundRobin
    ) -> None:
        self._pool = pool
        self._policies = {"prefill": prefill_policy, "decode": decode_policy}

    def pick(self, role: Role) -> NodeConnection:
        candidates = self._pool.candidates(role)
        if not candidates:
            raise NoNodeAvailable(
                f"no {role} node is connected to this master", code=f"no_{role}_node"
            )
        return self._policies[role].select(candidates)
