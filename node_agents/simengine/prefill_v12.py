"""The simulated LightLLM v1.2.0 prefill node.

On a REQ it uploads the prompt ids at once (before any compute), then waits (at most
``info_timeout_s``, LightLLM: 180 s) for the decode node's descriptor that the master relays
in PD_REQ_DECODE_NODE_INFO. If D already holds the whole prompt but its last token it stops
there and sends nothing; otherwise it prefills, reports its first token (``node_mode``
"prefill") and writes the KV cache of ``[ready_kv_len, len(prompt))`` to D's transfer
endpoint, which D's descriptor names (``agent_metadata``: this simulation's own JSON, where
LightLLM's NCCL transporter pickles its host, port and device).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from typing import Any

from node_agents.simengine.engine import Running
from node_agents.simengine.kvlink import read_frame, write_frame
from node_agents.simengine.links import MasterLink
from node_agents.simengine.prefill import PrefillJob, PrefillNode
from node_agents.simengine.textgen import Detokenizer
from pdwire.pd_io import ObjType, TokenEntry
from pdwire.structs import SamplingParamsBase

log = logging.getLogger(__name__)


class PrefillNodeV12(PrefillNode):
    info_timeout_s = 180.0

    def __init__(self, *args: Any, max_req_total_len: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_req_total_len = max_req_total_len
        self._waiting: dict[int, tuple[PrefillJob, asyncio.TimerHandle]] = {}
        self._infos: dict[int, Any] = {}  # group id -> the decode node's descriptor

    async def on_message(self, link: MasterLink, kind: ObjType, payload: Any, extra: Any) -> None:
        if kind is ObjType.PD_REQ_DECODE_NODE_INFO:
            self._on_decode_info(payload, extra)

    async def on_req(
        self, link: MasterLink, prompt: str | list[int], params: SamplingParamsBase
    ) -> None:
        if self.faults.roll(self.faults.fail_rate):
            self.stats.dropped += 1  # never uploads the prompt ids
            return
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        group_id = int(params.group_request_id)
        if len(prompt_ids) + int(params.max_new_tokens) > self.max_req_total_len:
            log.warning("group %d: the prompt is over max_req_total_len; dropped", group_id)
            self.stats.dropped += 1  # LightLLM's P fails the request and tells the master nothing
            return
        running = Running(
            group_id=group_id,
            link=link,
            gen=self.generation(prompt_ids, params, max(int(params.max_new_tokens), 1)),
            detok=Detokenizer(self.pieces, bool(params.skip_special_tokens)),
            prompt_tokens=len(prompt_ids),
            skip_special_tokens=bool(params.skip_special_tokens),
            meta={"node_mode": "prefill"},
        )
        job = PrefillJob(running, prompt_ids, None, 0, 0, 0)
        expire = asyncio.get_running_loop().call_later(self.info_timeout_s, self._give_up, group_id)
        self._waiting[group_id] = (job, expire)
        self._jobs[group_id] = job
        await link.send(self.codec.encode_prompt_ids(group_id, prompt_ids))

    def _give_up(self, group_id: int) -> None:
        waiting = self._waiting.pop(group_id, None)
        if waiting is not None:
            log.warning("group %d: no decode node info in time; dropped", group_id)
            self._jobs.pop(group_id, None)

    def _on_decode_info(self, group_id: int, info: Any) -> None:
        waiting = self._waiting.pop(group_id, None)
        if waiting is None:
            return
        job, expire = waiting
        expire.cancel()
        ready = int(info.ready_kv_len)
        if ready == len(job.prompt_ids) - 1:  # D holds the prompt: it computes the token itself
            self._finish(job)
            return
        self._infos[group_id] = info
        self._queue.append(job)
        self._work.set()

    async def on_abort(self, group_id: int) -> None:
        waiting = self._waiting.pop(group_id, None)
        if waiting is not None:
            waiting[1].cancel()
        self._infos.pop(group_id, None)
        await super().on_abort(group_id)

    def on_link_lost(self, link: MasterLink) -> None:
        super().on_link_lost(link)
        for group_id, (job, expire) in list(self._waiting.items()):
            if job.running.link is link:
                expire.cancel()
                del self._waiting[group_id]

    async def _emit_first_tokens(self, batch: list[PrefillJob]) -> None:
        per_link: dict[MasterLink, list[TokenEntry]] = defaultdict(list)
        for job in batch:
            info = self._infos.pop(job.running.group_id, None)
            if job.aborted or info is None:
                await self.kv.release(job.running.kv_tokens)
                continue
            extra = {
                "prompt_cache_len": job.cached_tokens,
                "prompt_ids": job.prompt_ids,
                "input_usage": input_usage(len(job.prompt_ids)),
            }
            entry, _ = job.running.step(self.tokenizer, extra)
            per_link[job.running.link].append(entry)
            task = asyncio.create_task(self._write_kv(job, info))
            self._transfers.add(task)
            task.add_done_callback(self._transfers.discard)
        await self.send_tokens(per_link)

    async def _write_kv(self, job: PrefillJob, info: Any) -> None:
        try:
            where = json.loads(info.agent_metadata)
            reader, writer = await asyncio.open_connection(where["host_ip"], where["control_port"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("group %d: decode node unreachable: %s", job.running.group_id, exc)
            await self.kv.release(job.running.kv_tokens)
            self._finish(job)
            return
        try:
            await write_frame(
                writer,
                {
                    "op": "write",
                    "request_id": int(info.request_id),
                    "first_token_id": job.running.gen.output_ids[0],
                },
            )
            if not (await read_frame(reader)).get("ready"):
                return
            moved = len(job.prompt_ids) - int(info.ready_kv_len)
            await asyncio.sleep(self.timing.kv_transfer_s(moved))
            await write_frame(writer, {"op": "aborted" if job.aborted else "done"})
            await read_frame(reader)
            self.stats.kv_handoffs += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("KV write of %d failed: %s", job.running.group_id, exc)
        finally:
            writer.close()
            await self.kv.release(job.running.kv_tokens)
            self._finish(job)


def input_usage(prompt_tokens: int) -> dict[str, int]:
    return {"input_text_tokens": prompt_tokens, "input_audio_tokens": 0, "input_image_tokens": 0}
