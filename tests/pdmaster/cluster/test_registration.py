"""pdmaster.cluster.registration against a real config server process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal

import httpx

from pdlocal.cluster import ProcGroup
from pdlocal.registry import start_config_server
from pdmaster.cluster.registration import MasterRegistration
from tests.config_server.helpers import ids, items, registered_objects

NODE_ID = 2**100 + 7


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.05)


def test_registers_both_ways_reports_info_and_deregisters_on_stop(procs: ProcGroup) -> None:
    server = start_config_server(procs, "--register-token", "reg")

    async def scenario() -> None:
        load = {"in_flight": 0}
        async with httpx.AsyncClient() as client:
            registration = MasterRegistration(
                client,
                server.address,
                NODE_ID,
                "127.0.0.9:60011",
                ttl_s=3,
                heartbeat_s=0.2,
                info=lambda: dict(load),
                register_token="reg",
            )
            async with registration:
                await asyncio.wait_for(registration.ws_connected.wait(), 10)
                await asyncio.wait_for(registration.lease_ok.wait(), 10)
                objs = await asyncio.to_thread(registered_objects, server.url)
                assert objs[NODE_ID].host_ip_port == "127.0.0.9:60011"
                load["in_flight"] = 5
                await until(lambda: [m["info"] for m in items(server.url, "masters")] == [load])
                [record] = await asyncio.to_thread(items, server.url, "masters")
                assert record["state"] == "serving" and record["ttl_s"] == 3
            # stop(): the lease is removed at once and the socket closed
            assert await asyncio.to_thread(ids, server.url, "masters") == set()
            await until(lambda: registered_objects(server.url) == {})

    asyncio.run(scenario())


def test_registers_again_after_the_config_server_restarts(procs: ProcGroup) -> None:
    server = start_config_server(procs, name="config_server_1")

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            registration = MasterRegistration(
                client,
                server.address,
                11,
                "127.0.0.9:60011",
                ttl_s=3,
                retry_initial_s=0.05,
                retry_max_s=0.3,
            )
            async with registration:
                await until(lambda: ids(server.url, "masters") == {"11"})
                server.proc.kill(signal.SIGKILL)
                await until(lambda: not registration.ws_connected.is_set(), 5)
                await asyncio.to_thread(
                    start_config_server, procs, name="config_server_2", port=server.port
                )
                await until(lambda: 11 in registered_objects(server.url), 5)
                await until(lambda: ids(server.url, "masters") == {"11"}, 5)
                # The server lists the master as soon as it reads the frame; the master marks
                # its socket connected right after sending it, so wait rather than race.
                await until(registration.ws_connected.is_set, 5)

    asyncio.run(scenario())
