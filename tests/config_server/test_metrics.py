"""The config server's ``GET /metrics``: what it holds, for Prometheus."""

from __future__ import annotations

from pdlocal.registry import ConfigServer
from tests.config_server.helpers import http, node_body, put


def test_metrics_count_registrations_by_role_and_state(memory_server: ConfigServer) -> None:
    url = memory_server.url
    assert put(url, "nodes", "metrics-p0", node_body("prefill")).status_code == 200
    assert put(url, "nodes", "metrics-d0", node_body("decode", state="DRAINING")).status_code == 200
    try:
        reply = http().get(f"{url}/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        lines = reply.text.splitlines()
        assert "pd_config_store_ready 1.0" in lines
        assert 'pd_config_nodes{role="prefill",state="RUNNING",via="v1"} 1.0' in lines
        assert 'pd_config_nodes{role="decode",state="DRAINING",via="v1"} 1.0' in lines
    finally:
        for node in ("metrics-p0", "metrics-d0"):
            http().delete(f"{url}/v1/nodes/{node}")
