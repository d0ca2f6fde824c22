"""Prometheus metrics of one master, in a registry of its own (no process globals)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pdmaster.dispatch.session import DispatchObserver
from pdmaster.errors import ApiError
from pdmaster.nodes.breaker import BreakerState
from pdmaster.nodes.pool import NodePool
from pdmaster.nodes.tracking import RequestTable
from pdmaster.routing.admission import Admission

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

_go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus_client


class _PoolCollector(Collector):
    """Gauges read from the node pool and the queue at scrape time."""

    def __init__(self, pool: NodePool, admission: Admission, table: RequestTable) -> None:
        self._pool = pool
        self._admission = admission
        self._table = table

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["node_id", "role", "address"]
        inflight = GaugeMetricFamily(
            "pd_node_inflight_requests", "Requests in flight per node", labels=labels
        )
        tokens = GaugeMetricFamily(
            "pd_node_inflight_tokens", "Tokens held in flight per node", labels=labels
        )
        breaker = GaugeMetricFamily(
            "pd_node_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", labels=labels
        )
        info = GaugeMetricFamily(
            "pd_node_info",
            "1 per connected node, labelled with its LightLLM version (and v1.2.0 transport)",
            labels=[*labels, "lightllm_version", "pd_trans_mode"],
        )
        for node in self._pool.nodes():
            key = [self._pool.name_of(node), node.info.mode, node.info.client_ip_port]
            inflight.add_metric(key, node.in_flight)
            tokens.add_metric(key, node.in_flight_tokens)
            breaker.add_metric(key, BREAKER_VALUE[node.breaker.state])
            info.add_metric([*key, node.info.version, node.info.pd_trans_mode or ""], 1)
        yield inflight
        yield tokens
        yield breaker
        yield info
        queue = GaugeMetricFamily("pd_queue_depth", "Requests waiting for a dispatch slot")
        queue.add_metric([], self._admission.queued)
        yield queue
        running = GaugeMetricFamily("pd_requests_running", "Requests dispatched and not finished")
        running.add_metric([], self._admission.inflight)
        yield running
        ignored = CounterMetricFamily(
            "pd_node_load_reports_ignored",
            "Node load reports refused: usage not a finite number in range",
        )
        ignored.add_metric([], self._pool.bad_load_reports)
        yield ignored
        relayed = CounterMetricFamily(
            "pd_stream_hand_overs",
            "Tokens handed to a waiting stream with a compiled relay, by the path they took "
            "(compiled: pdmaster._lane; python: a case it leaves to the Python chain)",
            labels=["path"],
        )
        relayed.add_metric(["compiled"], self._table.relayed)
        relayed.add_metric(["python"], self._table.declined)
        yield relayed


class LoopHistogram(Collector):
    """A histogram observed from the event loop thread only: no lock, one bisect per value.

    ``prometheus_client.Histogram`` locks and updates several values per observation; the
    inter-token histogram is observed once per relayed chunk, so it stays this cheap.
    ``pdmaster/_lane.c`` observes the same way (into ``_counts`` and ``_sum``, bounds from
    ``_bounds``): change both together.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, running = [], 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            running += count
            cumulative.append((_go_float(bound), running))
        family = HistogramMetricFamily(self._name, self._doc)
        family.add_metric([], cumulative, self._sum)
        yield family


class MasterMetrics(DispatchObserver):
    def __init__(self, pool: NodePool, admission: Admission, table: RequestTable) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pd_requests",
            "Client requests by endpoint and outcome",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self._request_counts: dict[tuple[str, str], Counter] = {}
        self.ttft = LoopHistogram(
            "pd_time_to_first_token_seconds", "Request arrival to first token sent", LATENCY_BUCKETS
        )
        self.itl = LoopHistogram(
            "pd_inter_token_latency_seconds",
            "Gap between successive writes of a stream",
            LATENCY_BUCKETS,
        )
        self.registry.register(self.ttft)
        self.registry.register(self.itl)
        self.retries = Counter(
            "pd_retries",
            "Requests retried on another pair, by cause",
            ["code"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pool, admission, table))

    def count_request(self, endpoint: str, status: str) -> None:
        child = self._request_counts.get((endpoint, status))
        if child is None:  # a few endpoints and statuses: each pair's child is looked up once
            child = self._request_counts[endpoint, status] = self.requests.labels(endpoint, status)
        child.inc()

    def retried(self, error: ApiError) -> None:
        self.retries.labels(error.code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
