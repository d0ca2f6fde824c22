"""The master's pool of connected prefill and decode nodes; the one owner of node state."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pdmaster.errors import NodeFailed
from pdmaster.nodes.breaker import CircuitBreaker
from pdwire.api import decimal
from pdwire.errors import MalformedMessageError
from pdwire.message_sets import detect_version

log = logging.getLogger(__name__)

Role = Literal["prefill", "decode"]
MAX_USAGE_RATE = 16.0  # a KV usage rate past this is no report but an attack or a bug
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def node_name(mode: str, address: str) -> str:
    """A node's stable name, ``<role>-<host>-<port>``: the node agent's default id in the
    config server, so one name means one node everywhere, across engine restarts (the
    LightLLM node id is random per engine start)."""
    host, _, port = address.rpartition(":")
    return NAME_UNSAFE.sub("_", f"{mode}-{host.strip('[]')}-{port}")


class Attached(Protocol):
    """What a node needs of a request it serves: a way to fail it when the node goes."""

    def fail(self, error: Exception) -> None: ...


class RegistrationError(ValueError):
    """A node's registration frame does not say what LightLLM nodes say."""


V12 = "v1.2.0"


def registration_version(frame: dict[str, Any], accepted: frozenset[str]) -> str:
    """The LightLLM release a node runs, from its registration (``pdwire``'s rule).

    A node whose start arguments name none of the releases' own (a trimmed registration:
    LightLLM's nodes send them all) is taken as the one older release the master accepts,
    v1.1.0 when it accepts both.
    """
    try:
        version = detect_version(frame)
    except MalformedMessageError:
        version = None
    if version is None:
        older = sorted(v for v in accepted if v != V12)
        version = "v1.1.0" if "v1.1.0" in older or not older else older[0]
    if version not in accepted:
        raise RegistrationError(
            f"node runs LightLLM {version}; this master accepts {', '.join(sorted(accepted))} "
            "(--lightllm_version)"
        )
    return version


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    mode: Role
    client_ip_port: str
    host: str
    rpyc_port: int | None
    start_args: dict[str, Any]
    version: str = "v1.1.0"
    pd_trans_mode: str | None = None  # v1.2.0: P and D must use the same KV transport
    max_req_total_len: int | None = None  # v1.2.0: the node refuses longer requests silently

    @property
    def group(self) -> tuple[str, str | None]:
        """Nodes pair only within a group: one protocol version (and v1.2.0 transport)."""
        return self.version, self.pd_trans_mode

    @property
    def name(self) -> str:
        return node_name(self.mode, self.client_ip_port)

    @classmethod
    def from_registration(
        cls, frame: Any, accepted: frozenset[str] = frozenset({"v1.1.0"})
    ) -> NodeInfo:
        if not isinstance(frame, dict):
            raise RegistrationError("registration must be a JSON object")
        for key, kind in (
            ("node_id", int),
            ("client_ip_port", str),
            ("mode", str),
            ("start_args", dict),
        ):
            if not isinstance(frame.get(key), kind) or isinstance(frame.get(key), bool):
                raise RegistrationError(f"registration field {key!r} must be {kind.__name__}")
        mode = frame["mode"]
        if mode not in ("prefill", "decode"):
            raise RegistrationError(
                f"registration field 'mode' must be prefill or decode, got {mode!r}"
            )
        args = frame["start_args"]
        host = args.get("host")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise RegistrationError(
                f"start_args.host must be an IPv4 address, got {host!r}"
            ) from None
        version = registration_version(frame, accepted)
        rpyc_port = args.get("pd_decode_rpyc_port")
        if (
            version != V12
            and mode == "decode"
            and (not isinstance(rpyc_port, int) or not 0 < rpyc_port < 65536)
        ):
            raise RegistrationError(
                f"start_args.pd_decode_rpyc_port must be a port, got {rpyc_port!r}"
            )
        pd_node_id = args.get("pd_node_id", frame["node_id"])
        if not isinstance(pd_node_id, int) or not 0 <= pd_node_id < 1 << 128:
            raise RegistrationError("start_args.pd_node_id must be a 128-bit integer")
        trans_mode, max_len = None, None
        if version == V12:
            trans_mode = args.get("pd_trans_mode")
            if trans_mode not in ("nccl", "nixl"):
                raise RegistrationError(
                    f"start_args.pd_trans_mode must be nccl or nixl, got {trans_mode!r}"
                )
            max_len = args.get("max_req_total_len")
            if (
                isinstance(max_len, bool)
                or not isinstance(max_len, int)
                or not 0 < max_len < 1 << 40
            ):
                raise RegistrationError(
                    f"start_args.max_req_total_len must be a positive integer, got {max_len!r}"
                )
        return cls(
            pd_node_id,
            mode,
            frame["client_ip_port"],
            host,
            None if version == V12 else rpyc_port,
            args,
            version,
            trans_mode,
            max_len,
        )


@dataclass(eq=False)
class NodeConnection:
    info: NodeInfo
    _send: Callable[[bytes | bytearray], Awaitable[None]]
    connected_at: float
    breaker: CircuitBreaker
    peer_host: str  # the IP the node's socket comes from: what the node can speak for
    in_flight: int = 0
    in_flight_tokens: int = 0
    usage_rate: float | None = None  # the node's last valid report of its KV usage
    load_at: float | None = None
    draining: bool = False
    closed: bool = False
    requests: set[Attached] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # a decode node's hand-off struct for prefill REQs, kept by the dispatcher (see there)
    hand_off: tuple[Any, ...] | None = None

    @property
    def node_id(self) -> int:
        return self.info.node_id

    async def send(self, data: bytes | bytearray | Callable[[], bytes | bytearray]) -> None:
        """Send one frame; a callable is encoded only when the frame's turn comes.

        Sends to a node go one at a time and wait while its socket is backed up; a burst of
        requests then waits as small Python state, not as 20 KB encoded REQ frames each.
        """
        if self.closed:
            raise NodeFailed(f"{self.info.mode} node {self.info.client_ip_port} is gone", node=self)
        lock = self._lock
        try:
            await lock.acquire()  # as ``async with`` does, without its two coroutine calls
            try:
                await self._send(data() if callable(data) else data)
            finally:
                lock.release()
        except Exception as exc:
            raise NodeFailed(
                f"{self.info.mode} node {self.info.client_ip_port} failed: {type(exc).__name__}",
                node=self,
            ) from exc

    def attach(self, request: Attached, tokens: int) -> None:
        """Count a request (and the tokens it will hold) against this node until detached."""
        self.requests.add(request)
        self.in_flight += 1
        self.in_flight_tokens += tokens

    def detach(self, request: Attached, tokens: int) -> None:
        if request in self.requests:
            self.requests.discard(request)
            self.in_flight -= 1
            self.in_flight_tokens -= tokens


class NodePool:
    def __init__(
        self,
        clock: Callable[[], float],
        new_breaker: Callable[[], CircuitBreaker] | None = None,
        load_max_age_s: float = 5.0,
    ) -> None:
        self._clock = clock
        self._new_breaker = new_breaker or (lambda: CircuitBreaker(clock))
        self._load_max_age_s = load_max_age_s
        self._nodes: dict[int, NodeConnection] = {}
        self._breakers: dict[int, CircuitBreaker] = {}  # by node id: survives reconnects
        self._draining: set[str] = set()  # by name: drained across reconnects and restarts
        self._config_drained: set[str] = set()  # addresses the config server shows draining
        self._agent_names: dict[str, str] = {}  # address -> the node's id in the config server
        self.bad_load_reports = 0

    def connect(
        self, info: NodeInfo, send: Callable[[bytes | bytearray], Awaitable[None]], peer_host: str
    ) -> NodeConnection:
        """Add a node; a live node's id is taken over only from the address it is live at
        (a restarted node), never by another peer: node ids are public."""
        old = self._nodes.get(info.node_id)
        if old is not None and old.peer_host != peer_host:
            raise RegistrationError(
                f"node id {info.node_id} is live on a connection from {old.peer_host}"
            )
        if old is not None:
            self.disconnect(old, "replaced by a new connection with the same node id")
        if info.node_id not in self._breakers and len(self._breakers) >= 4096:
            gone = [i for i in self._breakers if i not in self._nodes]
            for node_id in gone[: len(gone) // 2 + 1]:
                del self._breakers[node_id]
        breaker = self._breakers.setdefault(info.node_id, self._new_breaker())
        conn = NodeConnection(info, send, self._clock(), breaker, peer_host)
        conn.draining = self._is_draining(info)
        self._nodes[info.node_id] = conn
        log.info("%s node %s joined (id %d)", info.mode, info.client_ip_port, info.node_id)
        return conn

    def disconnect(self, conn: NodeConnection, reason: str) -> None:
        """Remove a node at once and fail every request it was serving."""
        if conn.closed:
            return
        conn.closed = True
        if self._nodes.get(conn.node_id) is conn:
            del self._nodes[conn.node_id]
        log.warning(
            "%s node %s left (%s); failing %d request(s)",
            conn.info.mode,
            conn.info.client_ip_port,
            reason,
            len(conn.requests),
        )
        error = NodeFailed(
            f"{conn.info.mode} node {conn.info.client_ip_port} left: {reason}", node=conn
        )
        for request in list(conn.requests):
            request.fail(error)

    def now(self) -> float:
        return self._clock()

    def set_draining(self, name: str, draining: bool) -> None:
        """Stop (or resume) selecting a node, by name; its running requests go on."""
        if draining:
            self._draining.add(name)
        else:
            self._draining.discard(name)
        for conn in self._nodes.values():
            if conn.info.name == name:
                conn.draining = self._is_draining(conn.info)

    def set_config_drained(self, addresses: set[str]) -> None:
        """The node addresses whose agents drain them (the config server's records)."""
        self._config_drained = set(addresses)
        for conn in self._nodes.values():
            conn.draining = self._is_draining(conn.info)

    def set_agent_names(self, names: dict[str, str]) -> None:
        """Node ids the config server's records give addresses (an agent's own node_id)."""
        self._agent_names = dict(names)

    def name_of(self, conn: NodeConnection) -> str:
        """The node's name: its id in the config server, else ``<role>-<host>-<port>``."""
        return self._agent_names.get(conn.info.client_ip_port) or conn.info.name

    def drain_source(self, conn: NodeConnection) -> str | None:
        if conn.info.name in self._draining:
            return "master"
        if conn.info.client_ip_port in self._config_drained:
            return "config_server"
        return None

    def _is_draining(self, info: NodeInfo) -> bool:
        return info.name in self._draining or info.client_ip_port in self._config_drained

    def record_load(self, conn: NodeConnection, load: dict[str, Any]) -> None:
        """Keep a node's load report (a decode node's comes with each token frame); one whose
        usage rate is not a finite number in [0, MAX_USAGE_RATE] is ignored (and counted):
        it would steer every pick."""
        rate: Any = load.get("total_token_usage_rate")
        # a float (as nodes send it, per token frame) or an int, not a bool; compared exactly
        # for any int (no float() of a huge one), and false for NaN
        kind = rate.__class__
        if kind is float:
            if 0.0 <= rate <= MAX_USAGE_RATE:
                conn.usage_rate = rate
                conn.load_at = self._clock()
                return
        elif kind is int and 0 <= rate <= MAX_USAGE_RATE:
            conn.usage_rate = float(rate)
            conn.load_at = self._clock()
            return
        self.bad_load_reports += 1
        log.debug("ignored load report of node %s: %r", conn.info.client_ip_port, rate)

    def reported_usage(self, conn: NodeConnection) -> float | None:
        """The node's own KV usage rate, unless the report is older than the allowed age."""
        if conn.usage_rate is None or conn.load_at is None:
            return None
        if self._clock() - conn.load_at > self._load_max_age_s:
            return None
        return conn.usage_rate

    def nodes(self, role: Role | None = None) -> list[NodeConnection]:
        return [n for n in self._nodes.values() if role is None or n.info.mode == role]

    def get(self, node_id: int) -> NodeConnection | None:
        return self._nodes.get(node_id)

    def find(self, ref: str) -> list[NodeConnection]:
        """The nodes a name (``prefill-10.0.0.2-8019``), an address (``10.0.0.2:8019``) or a
        LightLLM node id refers to."""
        number = decimal(ref)
        if number is not None:
            node = self._nodes.get(number)
            return [node] if node is not None else []
        return [
            n
            for n in self._nodes.values()
            if ref in (n.info.name, self.name_of(n), n.info.client_ip_port)
        ]

    def candidates(self, role: Role) -> list[NodeConnection]:
        return [n for n in self._nodes.values() if n.info.mode == role and not n.draining]
