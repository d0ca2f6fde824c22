"""Prometheus metrics of the config server, read from its registry at scrape time (a
registry of their own; no process globals)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config_server.registry import Registry


class _RegistryCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._registry.store.view
        ready = GaugeMetricFamily("pd_config_store_ready", "1 once the store has loaded")
        ready.add_metric([], 1.0 if self._registry.ready else 0.0)
        yield ready
        revision = GaugeMetricFamily("pd_config_revision", "The store's latest revision")
        revision.add_metric([], float(view.head))
        yield revision
        masters = GaugeMetricFamily(
            "pd_config_masters", "Registered masters by how they registered", labels=["via"]
        )
        nodes = GaugeMetricFamily(
            "pd_config_nodes",
            "Registered nodes by role, state and how they registered",
            labels=["role", "state", "via"],
        )
        for kind, family in (("master", masters), ("node", nodes)):
            counts: Counter[tuple[str, ...]] = Counter()
            for item in view.items(kind + "/"):
                data = item.data
                via = str(data.get("registered_via", ""))
                if kind == "master":
                    counts[(via,)] += 1
                else:
                    counts[(str(data.get("role")), str(data.get("state")), via)] += 1
            for labels, count in sorted(counts.items()):
                family.add_metric(list(labels), float(count))
            yield family


class ConfigServerMetrics:
    def __init__(self, registry: Registry) -> None:
        self._prometheus = CollectorRegistry(auto_describe=False)
        self._prometheus.register(_RegistryCollector(registry))

    def render(self) -> bytes:
        return generate_latest(self._prometheus)
