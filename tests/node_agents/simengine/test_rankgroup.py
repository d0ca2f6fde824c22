"""Simulated ranks meet over real loopback sockets, refuse strangers, and break together."""

from __future__ import annotations

import asyncio
import socket
import struct

from node_agents.simengine.rankgroup import RankGroup
from pdlocal.cluster import free_port


def test_three_ranks_meet_refuse_a_stranger_and_break_when_one_leaves() -> None:
    async def scenario() -> tuple[list[str | None], bytes]:
        port = free_port()
        broken: list[str | None] = [None, None, None]

        def on_broken(rank: int):  # type: ignore[no-untyped-def]
            return lambda why: broken.__setitem__(rank, why)

        ranks = [RankGroup(3, r, "127.0.0.1", port, on_broken(r)) for r in range(3)]
        forming = [asyncio.create_task(g.form()) for g in ranks[:2]]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in forming)  # rank 2 has not come: nobody serves
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"rank": 2, "nnodes": 9}\n')  # wrong group size: refused
        refused = await asyncio.wait_for(reader.read(), 5)
        assert not any(t.done() for t in forming)
        forming.append(asyncio.create_task(ranks[2].form()))
        async with asyncio.timeout(10):
            await asyncio.gather(*forming)
        assert all(g.formed for g in ranks)
        await ranks[2].close()  # rank 2 dies
        async with asyncio.timeout(5):
            while broken[0] is None or broken[1] is None:
                await asyncio.sleep(0.02)
        for g in ranks[:2]:
            await g.close()
        return broken, refused

    broken, refused = asyncio.run(scenario())
    assert refused == b""  # closed without an answer
    assert broken[0] == "rank 2 left the group" and broken[1] == "rank 0 left the group"


def test_a_rank_that_is_reset_by_a_dying_rank_0_tries_again() -> None:
    """A restart of every rank races the old rank 0's exit: a reset is retried, not fatal."""

    async def scenario() -> None:
        port = free_port()
        resets = asyncio.Event()

        async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\n")
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST, as a process killed with the hello unanswered
            resets.set()

        old = await asyncio.start_server(dying, "127.0.0.1", port, reuse_address=True)
        ranks = [RankGroup(2, r, "127.0.0.1", port, lambda why: None) for r in range(2)]
        joining = asyncio.create_task(ranks[1].form())
        await asyncio.wait_for(resets.wait(), 5)
        old.close()
        await old.wait_closed()
        async with asyncio.timeout(10):
            await asyncio.gather(ranks[0].form(), joining)
        assert all(g.formed for g in ranks)
        for g in ranks:
            await g.close()

    asyncio.run(scenario())
