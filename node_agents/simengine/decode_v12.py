"""The simulated LightLLM v1.2.0 decode node: reserve first, then take P's KV writes.

On a REQ (prompt ids, the block's budget) D admits the request, matches its prefix cache
(``ready_kv_len``, at most all but the last prompt token), reserves KV and reports a
``PDUpKVStatus`` on ``/kv_move_status`` naming its transfer endpoint. When D already holds
all but the last token it computes the first token itself; otherwise it waits (at most
``trans_timeout_s``, LightLLM: 180 s) for P's write, then reports the first token
(``node_mode`` "decode") and decodes the rest. A failed or late write ends the request with
FINISHED_ERROR (an end-of-text token), as LightLLM's D does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from node_agents.simengine.decode import HANDOFF_BACKLOG, DecodeNode
from node_agents.simengine.engine import Running
from node_agents.simengine.kvlink import read_frame, write_frame
from node_agents.simengine.links import MasterLink
from node_agents.simengine.prefill_v12 import input_usage
from node_agents.simengine.prefix_cache import PrefixCache
from node_agents.simengine.textgen import Detokenizer
from pdwire.pd_io import PDDecodeNodeInfo, PDUpKVStatus
from pdwire.structs import FinishStatus, SamplingParamsBase

log = logging.getLogger(__name__)
NUM_PAGES = 16
PAGE_SIZE = 1024


@dataclass(eq=False)
class Reserved:
    running: Running
    expire: asyncio.TimerHandle


class DecodeNodeV12(DecodeNode):
    trans_timeout_s = 180.0

    def __init__(
        self, *args: Any, max_req_total_len: int, prefix_cache_tokens: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_req_total_len = max_req_total_len
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._reserved: dict[int, Reserved] = {}
        self.control_port = 0

    async def start(self) -> list[asyncio.Task[None]]:
        self._server = await asyncio.start_server(
            self._serve_write, self.identity.host, 0, backlog=HANDOFF_BACKLOG
        )
        self.control_port = self._server.sockets[0].getsockname()[1]
        return [asyncio.create_task(self._loop(), name="decode-loop")]

    async def on_req(
        self, link: MasterLink, prompt: str | list[int], params: SamplingParamsBase
    ) -> None:
        if self.faults.roll(self.faults.fail_rate):
            self.stats.dropped += 1  # never reserves, never reports
            return
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        group_id = int(params.group_request_id)
        budget = int(params.max_new_tokens)
        if not ids or len(ids) + budget > self.max_req_total_len:
            log.warning("group %d: over max_req_total_len; dropped", group_id)
            return
        master_id = params.pd_master_node_id.node_id
        kv_link = self.links.get(master_id)
        if kv_link is None:
            log.warning("group %d: no connection to master %d", group_id, master_id)
            return
        tokens = await self.kv.reserve(len(ids) + budget)
        ready = min(self.prefix_cache.lookup_and_insert(ids), len(ids) - 1)
        running = Running(
            group_id=group_id,
            link=link,
            gen=self.generation(ids, params, budget),
            detok=Detokenizer(self.pieces, bool(params.skip_special_tokens)),
            prompt_tokens=len(ids),
            kv_tokens=tokens,
            skip_special_tokens=bool(params.skip_special_tokens),
            meta={"node_mode": "decode", "prompt_cache_len": ready},
            first_meta={"input_usage": input_usage(len(ids))},
        )
        status = PDUpKVStatus(
            group_request_id=group_id,
            pd_master_node_id=master_id,
            pd_kv_trans_params=self.codec.encode_trans_params(
                self._node_info(master_id, group_id, ready)
            ),
        )
        if ready == len(ids) - 1:
            self._start(running)
        else:
            expire = asyncio.get_running_loop().call_later(
                self.trans_timeout_s, self._transfer_failed, group_id
            )
            self._reserved[group_id] = Reserved(running, expire)
        if not await kv_link.send_kv_status(self.codec.encode_kv_status(status)):
            log.warning("group %d: kv_move_status not sent", group_id)

    def _node_info(self, master_id: int, request_id: int, ready: int) -> PDDecodeNodeInfo:
        node_id = self.identity.node_id
        agent_name = f"{node_id}_0"
        return PDDecodeNodeInfo(
            decode_node_id=node_id,
            pd_master_node_id=master_id,
            agent_name=agent_name,
            agent_metadata=json.dumps(
                {
                    "agent_name": agent_name,
                    "host_ip": self.identity.host,
                    "control_port": self.control_port,
                    "device_id": 0,
                }
            ).encode(),
            num_pages=NUM_PAGES,
            page_reg_desc=json.dumps({"num_pages": NUM_PAGES, "page_size": PAGE_SIZE}).encode(),
            request_id=request_id,
            ready_kv_len=ready,
        )

    def _start(self, running: Running) -> None:
        self._running[running.group_id] = running
        self._work.set()

    def _transfer_failed(self, group_id: int) -> None:
        reserved = self._reserved.pop(group_id, None)
        if reserved is not None:
            asyncio.get_running_loop().create_task(self._fail(reserved.running))

    async def _fail(self, running: Running) -> None:
        """LightLLM's D after a failed KV move: an end-of-text token with FINISHED_ERROR."""
        self.stats.dropped += 1
        meta = {
            "id": self.eos_id,
            "logprob": 0.0,
            "cumlogprob": 0.0,
            "special": True,
            "count_output_tokens": len(running.gen.output_ids) + 1,
            "mtp_accepted_token_num": 0,
            "prompt_tokens": running.prompt_tokens,
            "prompt_cache_len": 0,
            "node_mode": "decode",
        }
        entry = (running.group_id, "", meta, FinishStatus(FinishStatus.FINISHED_ERROR))
        await self.kv.release(running.kv_tokens)
        await self.send_tokens({running.link: [entry]})

    async def _serve_write(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reserved: Reserved | None = None
        try:
            offer = await read_frame(reader)
            reserved = self._reserved.pop(int(offer["request_id"]), None)
            if reserved is None:
                await write_frame(writer, {"refused": "unknown request"})
                return
            reserved.expire.cancel()
            await write_frame(writer, {"ready": True})
            done = await read_frame(reader)
            await write_frame(writer, {"ok": True})
            if done.get("op") != "done" or self.faults.roll(self.faults.drop_kv_rate):
                await self._fail(reserved.running)
                return
            self.stats.kv_handoffs += 1
            self._start(reserved.running)
            reserved = None
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, TypeError) as exc:
            log.warning("KV write failed: %s", exc)
            if reserved is not None:
                await self._fail(reserved.running)
        finally:
            writer.close()

    async def on_abort(self, group_id: int) -> None:
        reserved = self._reserved.pop(group_id, None)
        if reserved is not None:
            reserved.expire.cancel()
            await self.kv.release(reserved.running.kv_tokens)
        await super().on_abort(group_id)

    def on_link_lost(self, link: MasterLink) -> None:
        super().on_link_lost(link)
        for group_id, reserved in list(self._reserved.items()):
            if reserved.running.link is link:
                reserved.expire.cancel()
                del self._reserved[group_id]
                asyncio.get_running_loop().create_task(self.kv.release(reserved.running.kv_tokens))
