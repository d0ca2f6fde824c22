"""Pair selection: filter each pool (connected, not draining, breaker allows), ask its policy.

A prefill node pairs only with decode nodes of its group (one LightLLM protocol version
and, for v1.2.0, one ``pd_trans_mode``): a master may serve several groups at once. A
request that sets a field some releases' requests cannot carry (``seed`` on v1.1.0) is
paired only with nodes of the other releases; it is refused, naming the field, only when
no node of those is connected.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from pdmaster.errors import BadRequest, NoNodeAvailable
from pdmaster.nodes.pool import V12, NodeConnection, NodePool, Role
from pdmaster.routing.policies import NodeView, Policy, RequestView

_view = tuple.__new__  # a NamedTuple's own __new__ calls it, from Python


class PairSelector:
    def __init__(self, pool: NodePool, prefill_policy: Policy, decode_policy: Policy) -> None:
        self._pool = pool
        self._policies: dict[Role, Policy] = {"prefill": prefill_policy, "decode": decode_policy}

    def pick_pair(
        self,
        request: RequestView,
        exclude: Collection[NodeConnection] = (),
        total_len: int = 0,
        refused: Mapping[str, str] | None = None,
    ) -> tuple[NodeConnection, NodeConnection | None]:
        """A prefill node and a decode node of its group (None: a v1.1.0 one-token request).

        ``total_len`` (prompt + max_new_tokens) must fit a v1.2.0 node's max_req_total_len.
        ``refused``: LightLLM version -> a field of the request its requests cannot carry;
        nodes of those versions are left out.
        """
        refused = refused or {}
        prefills = self._healthy("prefill", refused)
        connected_decodes = self._pool.candidates("decode")
        decodes = (
            [n for n in connected_decodes if n.info.version not in refused]
            if refused
            else connected_decodes
        )
        # loops rather than comprehensions or calls per node: each of those is a call, for a
        # node or two
        healthy_decodes = []
        groups: dict[tuple[str, str | None], list[NodeConnection]] = {}  # the healthy ones
        for n in decodes:
            if n.breaker.allows():
                healthy_decodes.append(n)
                group = n.info.group
                members = groups.get(group)
                if members is None:
                    groups[group] = [n]
                else:
                    members.append(n)
        one_token = request.max_new_tokens <= 1
        fitting = []
        for n in prefills:
            info = n.info  # pairs(n, ...), and total_len within its limit
            limit = info.max_req_total_len
            if (info.group in groups or (one_token and info.version != V12)) and (
                limit is None or total_len <= limit
            ):
                fitting.append(n)
        if not fitting:
            paired = [n for n in prefills if pairs(n, groups, one_token)]
            if paired:
                longest = max(n.info.max_req_total_len or 0 for n in paired)
                raise BadRequest(
                    f"inputs: {total_len} prompt + new tokens exceed max_req_total_len "
                    f"{longest} of the nodes that could serve it",
                    code="invalid_field",
                )
            if connected_decodes and not decodes:
                raise uncarried("decode", connected_decodes, refused)
            if not decodes:
                raise NoNodeAvailable(
                    "no decode node is connected to this master", code="no_decode_node"
                )
            if not healthy_decodes:
                raise NoNodeAvailable(
                    "every decode node is failing (circuit breakers open)",
                    code="no_healthy_decode_node",
                )
            raise NoNodeAvailable(
                "no decode node pairs with a prefill node: they run different LightLLM "
                "versions or pd_trans_modes",
                code="no_decode_node",
            )
        prefill = self._choose("prefill", fitting, request, exclude)
        info = prefill.info
        if one_token and info.version != V12:
            return prefill, None
        mates = []
        for n in groups.get(info.group, ()):
            limit = n.info.max_req_total_len
            if limit is None or total_len <= limit:
                mates.append(n)
        if not mates:
            raise BadRequest(
                f"inputs: {total_len} prompt + new tokens exceed max_req_total_len of every "
                "decode node",
                code="invalid_field",
            )
        return prefill, self._choose("decode", mates, request, exclude)

    def _healthy(self, role: Role, refused: Mapping[str, str]) -> list[NodeConnection]:
        connected = self._pool.candidates(role)
        if not connected:
            raise NoNodeAvailable(
                f"no {role} node is connected to this master", code=f"no_{role}_node"
            )
        able = [n for n in connected if n.info.version not in refused] if refused else connected
        if not able:
            raise uncarried(role, connected, refused)
        healthy = []
        for n in able:
            if n.breaker.allows():
                healthy.append(n)
        if not healthy:
            raise NoNodeAvailable(
                f"every {role} node is failing (circuit breakers open)",
                code=f"no_healthy_{role}_node",
            )
        return healthy

    def _choose(
        self,
        role: Role,
        healthy: list[NodeConnection],
        request: RequestView,
        exclude: Collection[NodeConnection],
    ) -> NodeConnection:
        fresh = [n for n in healthy if n not in exclude] if exclude else healthy
        nodes = fresh or healthy
        usage = self._pool.reported_usage
        views = []
        for n in nodes:  # NodeView(...) without its Python __new__, once per candidate
            views.append(
                _view(NodeView, (n.info.node_id, n.in_flight, n.in_flight_tokens, usage(n)))
            )
        # node ids are unique in the pool: the view chosen is the one of its node
        chosen = nodes[views.index(self._policies[role].select(views, request))]
        chosen.breaker.on_dispatch()
        return chosen

    def may_open_breaker(self, node: NodeConnection) -> bool:
        """A timeout may open a breaker only if another node of the pool still takes traffic."""
        return any(
            n is not node and n.breaker.allows() for n in self._pool.candidates(node.info.mode)
        )


def uncarried(
    role: Role, connected: Sequence[NodeConnection], refused: Mapping[str, str]
) -> BadRequest:
    """400 naming the field that no connected node's release can carry."""
    versions = sorted({n.info.version for n in connected})
    return BadRequest(
        f"{refused[versions[0]]}: the connected {role} nodes run LightLLM "
        f"{', '.join(versions)}, whose requests have no field for it",
        code="unsupported_field",
    )


def pairs(
    node: NodeConnection, groups: Collection[tuple[str, str | None]], one_token: bool
) -> bool:
    """Whether prefill ``node`` has a decode mate among ``groups`` (or needs none)."""
    info = node.info
    return info.group in groups or (one_token and info.version != V12)
