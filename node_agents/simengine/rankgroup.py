"""The ranks of a simulated multi-node instance, coupled as LightLLM's are by NCCL.

LightLLM's multi-node instance starts nothing until its ranks have met: rank 0 waits for
every other rank to check in (``send_and_receive_node_ip``), then all of them build NCCL
communicators on ``nccl_host:nccl_port``. From then on every forward step is a collective
(the MoE all-to-all), so when one rank dies the others do not fail cleanly: they hang.

Here rank 0 listens on ``nccl_host:nccl_port``; every other rank connects and sends one
line ``{"rank": r, "nnodes": n}``; once all are in, rank 0 answers ``ready`` to each and
the connections stay open. A connection that closes breaks the group: ``on_broken`` is
called once (the engine then hangs like an NCCL collective whose peer is gone), and only a
restart of every rank forms it again. Rank 0 then closes its other links, so every rank
hangs, as every collective involves every rank. Forming has no deadline of its own: the
supervising agent's startup timeout covers it, as it covers LightLLM's blocking start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from pdwire import jsonlimits

log = logging.getLogger(__name__)

HELLO_LIMIT = 256  # bytes of a hello line
RETRY_S = 0.1


class RankGroup:
    def __init__(
        self,
        nnodes: int,
        rank: int,
        nccl_host: str,
        nccl_port: int,
        on_broken: Callable[[str], None],
    ) -> None:
        if not 0 <= rank < nnodes:
            raise ValueError(f"node_rank {rank} must be below nnodes {nnodes}")
        self.nnodes, self.rank = nnodes, rank
        self._address = (nccl_host, nccl_port)
        self._on_broken = on_broken
        self._writers: list[asyncio.StreamWriter] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
        self.formed = False
        self.broken: str | None = None

    async def form(self) -> None:
        """Returns once every rank is in (at once for a single-node instance)."""
        if self.nnodes == 1:
            self.formed = True
            return
        if self.rank == 0:
            await self._gather()
        else:
            await self._join()
        self.formed = True
        log.info("rank %d of %d: the group is formed", self.rank, self.nnodes)

    async def _gather(self) -> None:
        peers: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        complete = asyncio.Event()

        async def check_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            rank = await self._read_hello(reader)
            if self.formed or rank is None or rank in peers:
                writer.close()  # late, malformed or a second rank r: not part of this group
                return
            peers[rank] = (reader, writer)
            if len(peers) == self.nnodes - 1:
                complete.set()

        host, port = self._address
        self._server = await asyncio.start_server(
            check_in, host, port, reuse_address=True, limit=HELLO_LIMIT
        )
        await complete.wait()
        for rank, (reader, writer) in sorted(peers.items()):
            writer.write(b"ready\n")
            self._watch(reader, writer, f"rank {rank} left the group")

    async def _read_hello(self, reader: asyncio.StreamReader) -> int | None:
        try:
            async with asyncio.timeout(5.0):
                line = await reader.readuntil(b"\n")
            hello = jsonlimits.loads(line, max_bytes=HELLO_LIMIT)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            jsonlimits.JsonRefused,
        ):
            return None
        if not isinstance(hello, dict) or hello.get("nnodes") != self.nnodes:
            return None
        rank = hello.get("rank")
        return rank if isinstance(rank, int) and 0 < rank < self.nnodes else None

    async def _join(self) -> None:
        host, port = self._address
        hello = json.dumps({"rank": self.rank, "nnodes": self.nnodes}).encode() + b"\n"
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port, limit=HELLO_LIMIT)
            except OSError:
                await asyncio.sleep(RETRY_S)  # rank 0 is not up yet
                continue
            writer.write(hello)
            # A reset is as much "not this time" as a close: the rank 0 of the previous
            # generation may still be dying, or refuse us as late; both go away on a retry.
            with contextlib.suppress(
                asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError
            ):
                if await reader.readuntil(b"\n") == b"ready\n":
                    self._watch(reader, writer, "rank 0 left the group")
                    return
            writer.close()  # a group formed without us (its ranks must restart): try again
            await asyncio.sleep(RETRY_S)

    def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, why: str) -> None:
        self._writers.append(writer)

        async def watch() -> None:
            with contextlib.suppress(OSError):
                while await reader.read(1024):
                    pass
            self._break(why)

        self._watchers.append(asyncio.create_task(watch(), name="rank-link"))

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            log.error("rank %d of %d: %s; collectives hang", self.rank, self.nnodes, why)
            self._on_broken(why)
            for writer in self._writers:  # every collective involves every rank: all hang
                writer.close()

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*self._watchers, return_exceptions=True)
