"""Pair selection: filter each pool (connected, not draining, breaker allows), ask its policy."""

from __future__ import annotations

from collections.abc import Collection

from pdmaster.errors import NoNodeAvailable
from pdmaster.nodes.pool import NodeConnection, NodePool, Role
from pdmaster.routing.policies import NodeView, Policy, RequestView


class PairSelector:
    def __init__(self, pool: NodePool, prefill_policy: Policy, decode_policy: Policy) -> None:
        self._pool = pool
        self._policies: dict[Role, Policy] = {"prefill": prefill_policy, "decode": decode_policy}

    def pick(
        self, role: Role, request: RequestView, exclude: Collection[NodeConnection] = ()
    ) -> NodeConnection:
        connected = self._pool.candidates(role)
        if not connected:
            raise NoNodeAvailable(
                f"no {role} node is connected to this master", code=f"no_{role}_node"
            )
        healthy = [n for n in connected if n.breaker.allows()]
        if not healthy:
            raise NoNodeAvailable(
                f"every {role} node is failing (circuit breakers open)",
                code=f"no_healthy_{role}_node",
            )
        fresh = [n for n in healthy if n not in exclude] or healthy
        by_id = {n.node_id: n for n in fresh}
        views = [
            NodeView(n.node_id, n.in_flight, n.in_flight_tokens, self._pool.reported_usage(n))
            for n in fresh
        ]
        chosen = by_id[self._policies[role].select(views, request).node_id]
        chosen.breaker.on_dispatch()
        return chosen

    def may_open_breaker(self, node: NodeConnection) -> bool:
        """A timeout may open a breaker only if another node of the pool still takes traffic."""
        return any(
            n is not node and n.breaker.allows() for n in self._pool.candidates(node.info.mode)
        )
