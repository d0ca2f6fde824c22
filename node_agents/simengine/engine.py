"""What prefill and decode simulated nodes share: masters, frames, stats, load."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from node_agents.simengine.faults import Faults
from node_agents.simengine.links import MasterLink
from node_agents.simengine.textgen import Detokenizer, Generation, Pieces
from node_agents.simengine.timing import KVCapacity, TimingModel
from pdmodel.tokenizer import ModelTokenizer
from pdwire.errors import WireError
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import ObjType, TokenEntry
from pdwire.structs import FinishStatus, SamplingParamsBase

log = logging.getLogger(__name__)
POLICY_VIOLATION = 1008
LOGPROB = -0.25
# ``--text_mode timestamp`` frames are encoded with this text, then it becomes the send time
# (f"{time.time():.6f}", the same width): encoding a big frame takes this Python engine
# milliseconds that LightLLM's C pickler does not spend, and are not the master's.
STAMP_SLOT = "<send time, 17 b>"


@dataclass
class Stats:
    requests: int = 0
    aborts: int = 0
    tokens: int = 0
    kv_handoffs: int = 0
    finished: int = 0
    dropped: int = 0  # requests or hand-offs dropped by a fault knob

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class NodeIdentity:
    node_id: int
    mode: str
    host: str
    port: int
    start_args: dict[str, Any] = field(default_factory=dict)

    @property
    def client_ip_port(self) -> str:
        return f"{self.host}:{self.port}"

    def registration(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "client_ip_port": self.client_ip_port,
            "mode": self.mode,
            "start_args": self.start_args,
        }


@dataclass(eq=False, slots=True)
class Running:
    """A request on this node: its generation state and the master it answers."""

    group_id: int
    link: MasterLink
    gen: Generation
    detok: Detokenizer
    prompt_tokens: int
    kv_tokens: int = 0
    skip_special_tokens: bool = True
    meta: dict[str, Any] | None = None  # added to every token's metadata (v1.2.0: node_mode)
    first_meta: dict[str, Any] | None = None  # ... and to the first token's (input_usage)

    def step(
        self, tokenizer: ModelTokenizer, extra: dict[str, Any] | None = None
    ) -> tuple[TokenEntry, int]:
        gen = self.gen
        token, status = gen.next_token()
        count = len(gen.output_ids)
        special = token in tokenizer.special_ids  # is_special, without a call per token
        text = "" if special and self.skip_special_tokens else self.detok.push(token)
        meta: dict[str, Any] = {
            "id": token,
            "logprob": LOGPROB,
            "cumlogprob": LOGPROB * count,
            "special": special,
            "count_output_tokens": count,
            "prompt_cache_len": 0,
            "mtp_accepted_token_num": 0,
            "prompt_tokens": self.prompt_tokens,
        }
        if self.meta:
            meta.update(self.meta)
        if self.first_meta and count == 1:
            meta.update(self.first_meta)
        if extra:
            meta.update(extra)
        return (self.group_id, text, meta, FinishStatus(status)), status


class SimNode:
    """Base of the simulated prefill and decode nodes."""

    def __init__(
        self,
        identity: NodeIdentity,
        codec: LightLLMCodec,
        tokenizer: ModelTokenizer,
        timing: TimingModel,
        faults: Faults | None = None,
    ) -> None:
        self.identity = identity
        self._client_ip_port = identity.client_ip_port  # in every token frame's load
        self.faults = faults or Faults()
        self.stamp_tokens = False
        self.codec = codec
        self.tokenizer = tokenizer
        self.pieces = Pieces(tokenizer)  # each token's text, for this node's Detokenizers
        self.timing = timing
        self.kv = KVCapacity(timing.kv_capacity_tokens)
        self.stats = Stats()
        self.links: dict[int, MasterLink] = {}
        self.last_params: SamplingParamsBase | None = None  # the last REQ's, for /sim/stats
        self.eos_id = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else 0

    async def on_frame(self, link: MasterLink, frame: bytes) -> None:
        if self.faults.hang:
            return
        try:
            kind, payload, extra = self.codec.decode_node_message(frame)
            if kind is ObjType.REQ:
                prompt, params, _ = self.codec.decode_req(payload)
                self.stats.requests += 1
                self.last_params = params
                await self.on_req(link, prompt, params)
            elif kind is ObjType.ABORT:
                if not isinstance(payload, int):
                    raise WireError("ABORT payload must be a group request id")
                self.stats.aborts += 1
                await self.on_abort(payload)
            else:
                await self.on_message(link, kind, payload, extra)
        except WireError as exc:
            log.error("bad frame from master %s: %s", link.address, exc)
            await link.close(POLICY_VIOLATION, str(exc)[:120])

    async def on_message(self, link: MasterLink, kind: ObjType, payload: Any, extra: Any) -> None:
        """A frame other than REQ and ABORT (v1.2.0: PD_REQ_DECODE_NODE_INFO)."""

    def on_link_lost(self, link: MasterLink) -> None:
        log.warning("lost master %s", link.address)

    def heartbeat(self) -> bytes | None:
        """v1.2.0's ``(HEARTBEAT,)`` frame, unless a fault knob silences it."""
        return None if self.faults.no_heartbeat else self.codec.encode_heartbeat()

    def load(self) -> dict[str, Any]:
        return {
            "total_token_usage_rate": self.kv.usage_rate,
            "client_ip_port": self._client_ip_port,
        }

    async def send_tokens(self, per_link: dict[MasterLink, list[TokenEntry]]) -> None:
        load = self.load()
        for link, entries in self.stamped(per_link, STAMP_SLOT).items():
            self.stats.tokens += len(entries)
            frame = self.stamp_frame(self.codec.encode_token_packs(entries, load))
            if not link.send_now(frame):  # a step's frame, without a coroutine when it can
                await link.send(frame)
        crash_after = self.faults.crash_after_tokens
        if crash_after and self.stats.tokens >= crash_after:
            log.error("fault: crashing after %d tokens", self.stats.tokens)
            os._exit(17)

    def stamped(
        self, per_link: dict[Any, list[TokenEntry]], text: str | None = None
    ) -> dict[Any, list[TokenEntry]]:
        """With ``--text_mode timestamp``, each token's text becomes ``text`` (default: now)."""
        if not self.stamp_tokens:
            return per_link
        now = text or f"{time.time():.6f}"
        return {k: [(e[0], now, e[2], e[3]) for e in v] for k, v in per_link.items()}

    def stamp_frame(self, frame: bytes) -> bytes:
        """The frame with its tokens' ``STAMP_SLOT`` text (pickled once) set to the time now."""
        if not self.stamp_tokens:
            return frame
        now = f"{time.time():.6f}".encode()
        slot = STAMP_SLOT.encode()
        assert len(now) == len(slot)
        return frame.replace(b"\x8c\x11" + slot, b"\x8c\x11" + now, 1)

    async def step_pause(self, seconds: float) -> None:
        """Sleep for a batch's compute time, plus injected latency; a hung node stays here."""
        await asyncio.sleep(seconds + self.faults.extra_latency_s)
        while self.faults.hang:
            await asyncio.sleep(0.05)

    def generation(
        self, prompt_ids: list[int], params: SamplingParamsBase, max_new_tokens: int
    ) -> Generation:
        return self.plain_generation(
            prompt_ids,
            max_new_tokens,
            bool(params.ignore_eos),
            int(params.min_new_tokens),
            params.stop_token_sequences(),
        )

    def plain_generation(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        ignore_eos: bool,
        min_new_tokens: int,
        stop_sequences: list[list[int]],
    ) -> Generation:
        return Generation(
            prompt_ids=prompt_ids or [self.eos_id],
            max_new_tokens=max_new_tokens,
            eos_id=self.eos_id,
            ignore_eos=ignore_eos,
            min_new_tokens=min_new_tokens,
            stop_sequences=stop_sequences,
        )

    async def on_req(
        self, link: MasterLink, prompt: str | list[int], params: SamplingParamsBase
    ) -> None:
        raise NotImplementedError

    async def on_abort(self, group_id: int) -> None:
        raise NotImplementedError

    async def start(self) -> list[asyncio.Task[None]]:
        return []
