"""The simulated prefill node: batched prefill, first token, KV hand-off to the decode node."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

from node_agents.simengine.engine import NodeIdentity, Running, SimNode
from node_agents.simengine.faults import Faults
from node_agents.simengine.kvlink import read_frame, write_frame
from node_agents.simengine.links import MasterLink
from node_agents.simengine.prefix_cache import PrefixCache
from node_agents.simengine.textgen import Detokenizer
from node_agents.simengine.timing import TimingModel
from pdmodel.tokenizer import ModelTokenizer
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import TokenEntry
from pdwire.structs import SamplingParamsBase

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PrefillJob:
    running: Running
    prompt_ids: list[int]
    decode_ip: str | None
    decode_port: int
    decode_max_new_tokens: int
    pd_master_node_id: int
    aborted: bool = False
    cached_tokens: int = 0


class PrefillNode(SimNode):
    def __init__(
        self,
        identity: NodeIdentity,
        codec: LightLLMCodec,
        tokenizer: ModelTokenizer,
        timing: TimingModel,
        faults: Faults,
        prefix_cache_tokens: int = 0,
    ) -> None:
        super().__init__(identity, codec, tokenizer, timing, faults)
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._queue: list[PrefillJob] = []
        self._jobs: dict[int, PrefillJob] = {}
        self._work = asyncio.Event()
        self._transfers: set[asyncio.Task[None]] = set()

    async def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._loop(), name="prefill-loop")]

    async def on_req(
        self, link: MasterLink, prompt: str | list[int], params: SamplingParamsBase
    ) -> None:
        if self.faults.roll(self.faults.fail_rate):
            self.stats.dropped += 1
            return
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        move = params.move_kv_to_decode_node
        total = move.max_new_tokens + 1 if move.exists else params.max_new_tokens
        gen = self.generation(prompt_ids, params, max(total, 1))
        running = Running(
            group_id=params.group_request_id,
            link=link,
            gen=gen,
            detok=Detokenizer(self.pieces, bool(params.skip_special_tokens)),
            prompt_tokens=len(prompt_ids),
            skip_special_tokens=bool(params.skip_special_tokens),
        )
        job = PrefillJob(
            running,
            prompt_ids,
            move.ip_str if move.exists else None,
            move.rpyc_port,
            move.max_new_tokens,
            move.pd_master_node_id,
        )
        self._jobs[running.group_id] = job
        self._queue.append(job)
        self._work.set()

    async def on_abort(self, group_id: int) -> None:
        job = self._jobs.pop(group_id, None)
        if job is not None:
            job.aborted = True
            if job in self._queue:
                self._queue.remove(job)

    def on_link_lost(self, link: MasterLink) -> None:
        super().on_link_lost(link)
        for job in list(self._jobs.values()):
            if job.running.link is link:
                job.aborted = True
                self._jobs.pop(job.running.group_id, None)
        self._queue = [j for j in self._queue if not j.aborted]

    async def _loop(self) -> None:
        while True:
            await self._work.wait()
            batch: list[PrefillJob] = []
            tokens = 0
            while self._queue and (
                not batch or tokens + len(self._queue[0].prompt_ids) <= self.timing.batch_max_tokens
            ):
                job = self._queue.pop(0)
                batch.append(job)
                tokens += len(job.prompt_ids)
            if not self._queue:
                self._work.clear()
            if not batch:
                continue
            computed = 0
            for job in batch:
                job.running.kv_tokens = await self.kv.reserve(len(job.prompt_ids))
                job.cached_tokens = self.prefix_cache.lookup_and_insert(job.prompt_ids)
                computed += len(job.prompt_ids) - job.cached_tokens
            await self.step_pause(self.timing.prefill_s(computed))
            await self._emit_first_tokens(batch)

    async def _emit_first_tokens(self, batch: list[PrefillJob]) -> None:
        per_link: dict[MasterLink, list[TokenEntry]] = defaultdict(list)
        for job in batch:
            if job.aborted:
                await self.kv.release(job.running.kv_tokens)
                continue
            extra = {"prompt_cache_len": job.cached_tokens, "prompt_ids": job.prompt_ids}
            entry, status = job.running.step(self.tokenizer, extra)
            per_link[job.running.link].append(entry)
            if status == 0 and job.decode_ip is not None:
                task = asyncio.create_task(self._hand_off(job, entry[2]["id"]))
                self._transfers.add(task)
                task.add_done_callback(self._transfers.discard)
            else:
                self._finish(job)
                await self.kv.release(job.running.kv_tokens)
        await self.send_tokens(per_link)

    def _finish(self, job: PrefillJob) -> None:
        self._jobs.pop(job.running.group_id, None)
        self.stats.finished += 1

    async def _hand_off(self, job: PrefillJob, first_token: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(job.decode_ip, job.decode_port)
        except OSError as exc:
            log.warning("decode node %s:%s unreachable: %s", job.decode_ip, job.decode_port, exc)
            await self.kv.release(job.running.kv_tokens)
            self._finish(job)
            return
        try:
            await write_frame(
                writer,
                {
                    "op": "offer",
                    "group_request_id": job.running.group_id,
                    "prompt_ids": job.prompt_ids,
                    "first_token_id": first_token,
                    "max_new_tokens": job.decode_max_new_tokens,
                    "pd_master_node_id": job.pd_master_node_id,
                },
            )
            if not (await read_frame(reader)).get("ready"):
                return
            await asyncio.sleep(self.timing.kv_transfer_s(len(job.prompt_ids)))
            if job.aborted:
                return
            await write_frame(writer, {"op": "done"})
            await read_frame(reader)
            self.stats.kv_handoffs += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("KV hand-off of %d failed: %s", job.running.group_id, exc)
        finally:
            writer.close()
            await self.kv.release(job.running.kv_tokens)
            self._finish(job)
