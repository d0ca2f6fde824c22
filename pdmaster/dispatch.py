"""LightLLM's two-phase PD dispatch, one ``PDSession`` per client request.

prefill node P: REQ(max_new_tokens=1, move_kv_to_decode_node=D) -> first token + prompt_ids
decode node D:  kv_move_status -> REQ(prompt_ids + [first token], suggested_dp_index) -> tokens
Any failure or early close sends ABORT to both nodes; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pdmaster.errors import DeadlineExceeded, NodeFailed
from pdmaster.node_pool import NodeConnection
from pdmaster.schemas import GenerateParameters
from pdmaster.selection import PairSelector
from pdmaster.tracking import RequestState, RequestTable
from pdwire.lightllm import LightLLMCodec, TokenEntry
from pdwire.structs import SamplingParamsBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchSettings:
    first_token_timeout_s: float = 60.0
    kv_move_timeout_s: float = 10.0
    token_idle_timeout_s: float = 60.0
    request_timeout_s: float = 600.0


@dataclass(frozen=True)
class PreparedRequest:
    prompt: str
    prompt_tokens: int
    parameters: GenerateParameters
    stop_token_ids: list[list[int]]


class PDDispatcher:
    """Everything a session needs, built once per master."""

    def __init__(
        self,
        codec: LightLLMCodec,
        selector: PairSelector,
        table: RequestTable,
        next_group_id: Callable[[], Awaitable[int]],
        master_node_id: Callable[[], int],
        settings: DispatchSettings,
        clock: Callable[[], float],
    ) -> None:
        self.codec = codec
        self.selector = selector
        self.table = table
        self.next_group_id = next_group_id
        self.master_node_id = master_node_id
        self.settings = settings
        self.clock = clock

    def session(self, request: PreparedRequest) -> PDSession:
        return PDSession(self, request)


class PDSession:
    def __init__(self, dispatcher: PDDispatcher, request: PreparedRequest) -> None:
        self._d = dispatcher
        self._req = request
        self._deadline = dispatcher.clock() + dispatcher.settings.request_timeout_s
        self._state: RequestState | None = None
        self._prefill: NodeConnection | None = None
        self._decode: NodeConnection | None = None
        self._first: TokenEntry | None = None
        self._decode_started = False
        self.finished = False
        self.closed = False

    @property
    def group_id(self) -> int | None:
        return self._state.group_id if self._state else None

    async def first(self) -> list[TokenEntry]:
        """Send the prompt to a prefill node and return its first token."""
        d = self._d
        wants_decode = self._req.parameters.max_new_tokens > 1
        prefill = d.selector.pick("prefill")
        decode = d.selector.pick("decode") if wants_decode else None
        state = RequestState(await d.next_group_id())
        self._state = state
        d.table.add(state)
        self._prefill = prefill
        self._decode = decode
        prefill.attach(state)
        if decode is not None:
            decode.attach(state)
        state.source = prefill
        try:
            await prefill.send(d.codec.encode_req(self._req.prompt, self._prefill_params(decode)))
            entries = await state.take(
                self._timeout(d.settings.first_token_timeout_s), "first token"
            )
        except BaseException:
            await self.close()
            raise
        self._first = entries[0]
        return self._after(entries)

    async def next(self) -> list[TokenEntry]:
        """The next tokens from the decode node; starts the decode phase on first call."""
        state = self._state
        assert state is not None and not self.finished
        try:
            if not self._decode_started:
                await self._start_decode(state)
            entries = await state.take(
                self._timeout(self._d.settings.token_idle_timeout_s), "token"
            )
        except BaseException:
            await self.close()
            raise
        return self._after(entries)

    async def close(self) -> None:
        """Forget the request; ABORT it on both nodes unless it finished normally."""
        if self.closed:
            return
        self.closed = True
        state = self._state
        if state is None:
            return
        self._d.table.remove(state)
        nodes = [n for n in (self._prefill, self._decode) if n is not None]
        for node in nodes:
            node.detach(state)
        if self.finished:
            # Finished at the prefill token: the decode node may hold the moved KV cache.
            nodes = [self._decode] if self._decode and not self._decode_started else []
        abort = self._d.codec.encode_abort(state.group_id)
        for node in nodes:
            if not node.closed:
                try:
                    await asyncio.shield(node.send(abort))
                except (NodeFailed, asyncio.CancelledError):
                    pass

    async def _start_decode(self, state: RequestState) -> None:
        decode = self._decode
        assert decode is not None and self._first is not None
        self._decode_started = True
        status = await state.kv_status(self._timeout(self._d.settings.kv_move_timeout_s))
        prompt_ids = self._first[2].get("prompt_ids")
        if not isinstance(prompt_ids, list):
            raise NodeFailed(
                "prefill node's first token carries no prompt_ids", code="bad_node_reply"
            )
        state.source = decode
        params = self._params(self._req.parameters.max_new_tokens - 1, state.group_id)
        params.suggested_dp_index = status.dp_index
        await decode.send(self._d.codec.encode_req(prompt_ids + [self._first[2]["id"]], params))

    def _after(self, entries: list[TokenEntry]) -> list[TokenEntry]:
        status = entries[-1][3].status
        if status not in (0, 1, 2):
            raise NodeFailed(f"node sent unknown finish status {status}", code="bad_node_reply")
        if status != 0 or self._decode is None:
            self.finished = True
        return entries

    def _timeout(self, stage: float) -> float:
        left = self._deadline - self._d.clock()
        if left <= 0:
            raise DeadlineExceeded("request deadline passed", code="request_timeout")
        return min(stage, left)

    def _prefill_params(self, decode: NodeConnection | None) -> SamplingParamsBase:
        assert self._state is not None
        params = self._params(1, self._state.group_id)
        if decode is not None:
            params.move_kv_to_decode_node.fill(
                node_id=decode.node_id,
                ip=decode.info.host,
                rpyc_port=decode.info.rpyc_port or 0,
                max_new_tokens=self._req.parameters.max_new_tokens - 1,
                pd_master_node_id=self._d.master_node_id(),
            )
        return params

    def _params(self, max_new_tokens: int, group_id: int) -> SamplingParamsBase:
        p = self._req.parameters
        params = self._d.codec.layout.new_sampling_params()
        params.do_sample = p.do_sample
        params.presence_penalty = p.presence_penalty
        params.frequency_penalty = p.frequency_penalty
        params.repetition_penalty = p.repetition_penalty
        params.temperature = p.temperature
        params.top_p = p.top_p
        params.top_k = p.top_k
        params.ignore_eos = p.ignore_eos
        params.max_new_tokens = max_new_tokens
        params.min_new_tokens = min(p.min_new_tokens, max_new_tokens)
        params.skip_special_tokens = p.skip_special_tokens
        params.add_special_tokens = p.add_special_tokens
        params.add_spaces_between_special_tokens = p.add_spaces_between_special_tokens
        params.print_eos_token = p.print_eos_token
        params.group_request_id = group_id
        params.set_stop_sequences(self._req.stop_token_ids, p.stop_sequences)
        return params
