"""Masters that die, freeze or restart, against a real config server on each store."""

from __future__ import annotations

import signal
import time

import pytest

from pdlocal.cluster import ProcGroup, wait_until
from pdlocal.registry import ConfigServer, start_config_server
from tests.config_server.helpers import (
    http,
    ids,
    items,
    registered_objects,
    start_fake_master,
)

TTL_S = 2.0


@pytest.fixture(params=["memory", "etcd"])
def server(request: pytest.FixtureRequest, procs: ProcGroup) -> ConfigServer:
    args = ["--lightllm-lease-ttl", str(TTL_S)]
    if request.param == "etcd":
        etcd = request.getfixturevalue("etcd")
        args += ["--store", "etcd", "--etcd-endpoints", etcd.endpoint]
    return start_config_server(procs, *args)


def listed(server: ConfigServer, node_id: int) -> tuple[bool, bool]:
    """(in /registered_objects, in /v1/masters)"""
    return node_id in registered_objects(server.url), str(node_id) in ids(server.url, "masters")


def seconds_until_gone(server: ConfigServer, node_id: int, timeout: float = 10.0) -> float:
    started = time.monotonic()
    wait_until(lambda: listed(server, node_id) == (False, False), timeout, f"{node_id} to go")
    return time.monotonic() - started


def test_masters_that_die_or_freeze_disappear_within_their_lease(
    server: ConfigServer, procs: ProcGroup
) -> None:
    """Both ways registered (our pdmaster), LightLLM-style (websocket only), and frozen."""
    both = start_fake_master(procs, server.address, 4242, "127.0.0.9:60011", "--ttl", "2")
    ws_only = start_fake_master(procs, server.address, 4444, "127.0.0.9:60012", "--no-lease")
    frozen = start_fake_master(procs, server.address, 4343, "127.0.0.9:60013", "--ttl", "2")
    expected = {
        "4242": ("v1", TTL_S),  # the /v1 lease owns a master registered both ways
        "4343": ("v1", TTL_S),
        "4444": ("lightllm_websocket", TTL_S),
    }

    def via() -> dict[str, tuple[str, float]]:
        return {r["id"]: (r["registered_via"], r["ttl_s"]) for r in items(server.url, "masters")}

    wait_until(lambda: via() == expected, 10, "the masters to register")
    for node_id in (4242, 4444, 4343):
        assert listed(server, node_id) == (True, True)

    frozen.kill(signal.SIGSTOP)  # its websocket stays open; only its /v1 lease can tell
    frozen_at = time.monotonic()
    try:
        ws_only.kill(signal.SIGKILL)
        assert seconds_until_gone(server, 4444) < 1.0  # LightLLM's rule: socket closed, gone
        both.kill(signal.SIGKILL)
        assert seconds_until_gone(server, 4242) < TTL_S + 1.0
        seconds_until_gone(server, 4343)
        assert time.monotonic() - frozen_at < TTL_S + 1.0
        time.sleep(0.5)
        assert listed(server, 4343) == (False, False)  # the open socket does not revive it
    finally:
        frozen.kill(signal.SIGCONT)
    wait_until(lambda: listed(server, 4343) == (True, True), 10, "4343 to renew again")


def test_masters_register_again_after_a_memory_config_server_restart(procs: ProcGroup) -> None:
    first = start_config_server(procs, name="config_server_1")
    start_fake_master(procs, first.address, 501, "127.0.0.9:60011")
    start_fake_master(procs, first.address, 502, "127.0.0.9:60012", "--no-lease")
    start_fake_master(procs, first.address, 503, "127.0.0.9:60013", "--no-websocket")
    masters = {501, 502, 503}
    wait_until(lambda: set(registered_objects(first.url)) == masters, 10, "masters to register")
    range_before = http().get(f"{first.url}/allocate_global_unique_id_range").json()

    first.proc.kill(signal.SIGKILL)
    assert first.proc.popen is not None
    first.proc.popen.wait(5)
    second = start_config_server(procs, name="config_server_2", port=first.port)
    assert registered_objects(second.url).keys() <= masters  # the memory store started empty
    started = time.monotonic()
    wait_until(
        lambda: (
            set(registered_objects(second.url)) == masters
            and ids(second.url, "masters") == {str(m) for m in masters}
        ),
        10,
        "masters to register again",
    )
    assert time.monotonic() - started < 5

    def via() -> dict[str, str]:
        return {r["id"]: r["registered_via"] for r in items(second.url, "masters")}

    # 501 may show as registered over the websocket until its next /v1 renewal lands.
    expected = {"501": "v1", "502": "lightllm_websocket", "503": "v1"}
    wait_until(lambda: via() == expected, 5, "the /v1 leases to own 501 and 503")
    range_after = http().get(f"{second.url}/allocate_global_unique_id_range").json()
    assert range_after["start_id"] >= range_before["end_id"]  # no id range handed out twice
