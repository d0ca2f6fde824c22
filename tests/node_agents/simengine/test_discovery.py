"""node_agents.simengine.discovery against a real config server process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal

import httpx

from node_agents.simengine.discovery import MasterDiscovery, MasterSet
from pdlocal.cluster import ProcGroup
from pdlocal.registry import start_config_server
from tests.config_server.helpers import start_fake_master


def test_reports_masters_as_they_come_and_go_and_keeps_them_through_outages(
    procs: ProcGroup,
) -> None:
    server = start_config_server(procs)
    seen: list[dict[int, str]] = []

    async def on_change(masters: MasterSet) -> None:
        seen.append({k: v.host_ip_port for k, v in masters.items()})

    async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            async with MasterDiscovery(client, server.address, on_change, interval_s=0.1):
                await until(lambda: seen == [{}])  # the first poll reports, even when empty
                a = start_fake_master(procs, server.address, 1, "127.0.0.1:60011", "--no-lease")
                await until(lambda: seen[-1] == {1: "127.0.0.1:60011"})
                start_fake_master(procs, server.address, 2, "127.0.0.1:60012", "--no-lease")
                await until(lambda: seen[-1] == {1: "127.0.0.1:60011", 2: "127.0.0.1:60012"})
                a.kill(signal.SIGKILL)
                await until(lambda: seen[-1] == {2: "127.0.0.1:60012"})
                calls = len(seen)
                server.proc.kill(signal.SIGKILL)
                await asyncio.sleep(0.5)  # polls fail: the node keeps its masters
                assert len(seen) == calls

    asyncio.run(scenario())


def test_a_master_missing_from_the_list_is_kept_while_connected(procs: ProcGroup) -> None:
    """After a config-server restart the list is empty until masters register again: a
    master the node is still connected to is kept; one it is not connected to goes after
    two polls."""
    server = start_config_server(procs)
    connected = {1: True, 2: False}
    seen: list[set[int]] = []

    async def on_change(masters: MasterSet) -> None:
        seen.append(set(masters))

    async def scenario() -> None:
        a = start_fake_master(procs, server.address, 1, "127.0.0.1:60011", "--no-lease")
        b = start_fake_master(procs, server.address, 2, "127.0.0.1:60012", "--no-lease")
        async with httpx.AsyncClient() as client:
            discovery = MasterDiscovery(
                client, server.address, on_change, interval_s=0.1,
                is_connected=connected.__getitem__,
            )  # fmt: skip
            async with discovery:
                async with asyncio.timeout(10):
                    while not seen or seen[-1] != {1, 2}:
                        await asyncio.sleep(0.05)
                a.kill(signal.SIGKILL)  # gone from the list, but "connected" still
                b.kill(signal.SIGKILL)
                async with asyncio.timeout(10):
                    while seen[-1] != {1}:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                assert seen[-1] == {1}
                connected[1] = False
                async with asyncio.timeout(5):
                    while seen[-1] != set():
                        await asyncio.sleep(0.05)

    asyncio.run(scenario())
