"""The simulated decode node: takes KV hand-offs, reports them, runs continuous batching."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

from node_agents.simengine.engine import NodeIdentity, Running, SimNode
from node_agents.simengine.faults import Faults
from node_agents.simengine.kvlink import read_frame, write_frame
from node_agents.simengine.links import MasterLink
from node_agents.simengine.textgen import Detokenizer
from node_agents.simengine.timing import TimingModel
from pdmodel.tokenizer import ModelTokenizer
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import TokenEntry
from pdwire.structs import SamplingParamsBase

log = logging.getLogger(__name__)

# One connection per hand-off: a burst of prefills opens hundreds at once, and past the
# listen queue the kernel resets them (asyncio's default backlog is 100).
HANDOFF_BACKLOG = 4096


@dataclass
class Handoff:
    prompt_ids: list[int]
    first_token_id: int
    kv_tokens: int


class DecodeNode(SimNode):
    def __init__(
        self,
        identity: NodeIdentity,
        codec: LightLLMCodec,
        tokenizer: ModelTokenizer,
        timing: TimingModel,
        faults: Faults,
        dp: int = 1,
    ) -> None:
        super().__init__(identity, codec, tokenizer, timing, faults)
        self.dp = max(dp, 1)
        self._handoffs: dict[int, Handoff] = {}
        self._running: dict[int, Running] = {}
        self._aborted: set[int] = set()
        self._work = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> list[asyncio.Task[None]]:
        port = int(self.identity.start_args["pd_decode_rpyc_port"])
        self._server = await asyncio.start_server(
            self._serve_handoff, self.identity.host, port, backlog=HANDOFF_BACKLOG
        )
        return [asyncio.create_task(self._loop(), name="decode-loop")]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve_handoff(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reserved = 0
        try:
            offer = await read_frame(reader)
            group_id = int(offer["group_request_id"])
            if group_id in self._aborted:
                await write_frame(writer, {"refused": "aborted"})
                return
            prompt_ids = [int(i) for i in offer["prompt_ids"]]
            reserved = await self.kv.reserve(len(prompt_ids) + int(offer["max_new_tokens"]))
            await write_frame(writer, {"ready": True})
            await read_frame(reader)  # "done": the cache has arrived
            if group_id in self._aborted:
                return
            link = self.links.get(int(offer["pd_master_node_id"]))
            self._handoffs[group_id] = Handoff(prompt_ids, int(offer["first_token_id"]), reserved)
            reserved = 0
            if self.faults.roll(self.faults.drop_kv_rate) or self.faults.hang:
                self.stats.dropped += 1  # the cache arrived but the master never hears of it
                await write_frame(writer, {"ok": True})
                return
            status = {
                "type": "kv_move_status",
                "group_request_id": group_id,
                "dp_index": group_id // 8 % self.dp,
                "pd_master_node_id": int(offer["pd_master_node_id"]),
            }
            if link is None or not await link.send_kv_status(status):
                log.warning(
                    "no connection to master %s for kv_move_status", offer["pd_master_node_id"]
                )
            await write_frame(writer, {"ok": True})
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, TypeError) as exc:
            log.warning("KV hand-off failed: %s", exc)
        finally:
            if reserved:
                await self.kv.release(reserved)
            writer.close()

    async def on_req(
        self, link: MasterLink, prompt: str | list[int], params: SamplingParamsBase
    ) -> None:
        group_id = int(params.group_request_id)
        handoff = self._handoffs.pop(group_id, None)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if handoff is None:  # no cache moved here: treat the last prompt token as the first output
            tokens = await self.kv.reserve(len(ids) + int(params.max_new_tokens))
            handoff = Handoff(ids[:-1], ids[-1], tokens)
        gen = self.generation(handoff.prompt_ids, params, int(params.max_new_tokens) + 1)
        gen.output_ids.append(handoff.first_token_id)
        detok = Detokenizer(self.pieces, bool(params.skip_special_tokens))
        detok.push(handoff.first_token_id)
        self._running[group_id] = Running(
            group_id=group_id,
            link=link,
            gen=gen,
            detok=detok,
            prompt_tokens=len(handoff.prompt_ids),
            kv_tokens=handoff.kv_tokens,
            skip_special_tokens=bool(params.skip_special_tokens),
        )
        self._work.set()

    async def on_abort(self, group_id: int) -> None:
        self._aborted.add(group_id)
        if len(self._aborted) > 100_000:
            self._aborted.clear()
        handoff = self._handoffs.pop(group_id, None)
        if handoff is not None:
            await self.kv.release(handoff.kv_tokens)
        running = self._running.pop(group_id, None)
        if running is not None:
            await self.kv.release(running.kv_tokens)

    def on_link_lost(self, link: MasterLink) -> None:
        super().on_link_lost(link)
        for group_id, running in list(self._running.items()):
            if running.link is link:
                self._running.pop(group_id)
                asyncio.get_running_loop().create_task(self.kv.release(running.kv_tokens))

    async def _loop(self) -> None:
        while True:
            await self._work.wait()
            if not self._running:
                self._work.clear()
                continue
            await self.step_pause(self.timing.decode_step_s(len(self._running)))
            per_link: dict[MasterLink, list[TokenEntry]] = defaultdict(list)
            for group_id, running in list(self._running.items()):
                entry, status = running.step(self.tokenizer)
                per_link[running.link].append(entry)
                if status:
                    del self._running[group_id]
                    self.stats.finished += 1
                    await self.kv.release(running.kv_tokens)
            await self.send_tokens(per_link)
