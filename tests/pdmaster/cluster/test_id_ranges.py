"""pdmaster.cluster.id_ranges against a real config server process on 127.0.0.1."""

from __future__ import annotations

import asyncio

import httpx

from pdlocal.cluster import ProcGroup, free_port
from pdlocal.registry import start_config_server
from pdmaster.cluster.id_ranges import IdRangeSource
from pdwire.pd_io import MAX_BEST_OF

IDS_PER_RANGE = 800_000 // MAX_BEST_OF


def test_ids_are_unique_multiples_of_8_across_masters_and_ranges_are_prefetched(
    procs: ProcGroup,
) -> None:
    server = start_config_server(procs)

    async def scenario() -> tuple[list[int], list[int], IdRangeSource]:
        async with httpx.AsyncClient() as client:
            async with (
                IdRangeSource(client, server.address) as one,
                IdRangeSource(client, server.url) as other,
            ):
                first = [await one.next() for _ in range(IDS_PER_RANGE * 3 // 4)]
                async with asyncio.timeout(10):  # past half the range: the next one comes
                    while one.ranges_fetched < 2:
                        await asyncio.sleep(0.02)
                assert one.ranges_fetched == 2
                first += [await one.next() for _ in range(IDS_PER_RANGE * 3 // 2)]
                second = await asyncio.gather(*(other.next() for _ in range(1000)))
                return first, list(second), one

    first, second, source = asyncio.run(scenario())
    assert source.ranges_fetched >= 3
    everything = first + second
    assert len(set(everything)) == len(everything)
    assert all(i % MAX_BEST_OF == 0 for i in everything)
    assert all(b - a == MAX_BEST_OF for a, b in zip(second, second[1:], strict=False))
    assert first == sorted(first)  # ranges are handed out in order on one server


def test_next_waits_for_a_config_server_that_is_not_up_yet(procs: ProcGroup) -> None:
    port = free_port()

    async def scenario() -> int:
        async with httpx.AsyncClient() as client:
            async with IdRangeSource(
                client, f"127.0.0.1:{port}", retry_initial_s=0.05, retry_max_s=0.2
            ) as ids:
                pending = asyncio.create_task(ids.next())
                await asyncio.sleep(0.3)
                assert not pending.done()
                await asyncio.to_thread(start_config_server, procs, port=port)
                return await asyncio.wait_for(pending, 10)

    assert asyncio.run(scenario()) % MAX_BEST_OF == 0


def test_take_hands_out_the_ids_at_hand_and_none_before_a_range_arrives(procs: ProcGroup) -> None:
    server = start_config_server(procs)

    async def scenario() -> tuple[int | None, list[int | None]]:
        async with httpx.AsyncClient() as client:
            async with IdRangeSource(client, server.address) as ids:
                before = ids.take()
                first = await ids.next()
                return before, [first, *(ids.take() for _ in range(5))]

    before, taken = asyncio.run(scenario())
    assert before is None
    assert taken[0] is not None and taken == [taken[0] + MAX_BEST_OF * i for i in range(6)]
