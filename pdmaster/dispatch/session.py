"""LightLLM's two-phase PD dispatch, one ``PDSession`` per client request.

v1.1.0 and fc72ffa nodes:
prefill node P: REQ(max_new_tokens=1, move_kv_to_decode_node=D) -> first token + prompt_ids
decode node D:  kv_move_status -> REQ(prompt_ids + [first token], suggested_dp_index) -> tokens

v1.2.0 nodes (decode first, in blocks): see ``flow_v12``.

The first token reaches the client only once the decode node holds the KV cache, so a
failed prefill or a hand-off past its deadline can still be retried, once, on another
pair (the abandoned nodes get an ABORT). After the first token a failure ends the stream.
Every wait has a deadline; any failure or early close ABORTs the request on its nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from pdmaster.dispatch.flow_v12 import BlockFlow
from pdmaster.dispatch.frames import RequestParams, decode_req, prefill_req, req_params
from pdmaster.dispatch.ids import IdSource
from pdmaster.errors import ApiError, DeadlineExceeded, NodeFailed
from pdmaster.nodes.pool import V12, NodeConnection
from pdmaster.nodes.tracking import RequestState, RequestTable, Sink
from pdmaster.routing.policies import RequestView
from pdmaster.routing.selection import PairSelector
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import TokenEntry
from pdwire.run_params import RunParameters
from pdwire.structs import SamplingParamsBase

log = logging.getLogger(__name__)

RETRYABLE_TIMEOUTS = {
    "first_token_timeout": "prefill",
    "kv_move_timeout": "decode",
    "prompt_ids_timeout": "prefill",
}


@dataclass(frozen=True)
class DispatchSettings:
    first_token_timeout_s: float = 60.0
    kv_move_timeout_s: float = 10.0
    token_idle_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    max_attempts: int = 2
    prompt_ids_timeout_s: float = 10.0  # v1.2.0: P's prompt-id upload (LightLLM: 60)
    block_tokens: int = 2048  # v1.2.0: LightLLM's LIGHTLLM_PD_SPLIT_MAX_NEW_TOKENS


class PreparedRequest(NamedTuple):
    """A checked client request, as a session runs it (a tuple, as ``RequestView``)."""

    prompt: str
    prompt_tokens: int
    parameters: RunParameters
    stop_token_ids: list[list[int]]
    view: RequestView | None = None


class DispatchObserver:
    """Hooks for metrics; the default does nothing."""

    def retried(self, error: ApiError) -> None:
        pass


class PDDispatcher:
    """Everything a session needs, built once per master."""

    def __init__(
        self,
        codecs: Mapping[str, LightLLMCodec],
        selector: PairSelector,
        table: RequestTable,
        ids: IdSource,
        master_node_id: Callable[[], int],
        settings: DispatchSettings,
        clock: Callable[[], float],
        observer: DispatchObserver | None = None,
    ) -> None:
        self.codecs = codecs
        self.versions = frozenset(codecs)
        self.sampling_params = {
            version: RequestParams(codec.layout.new_sampling_params)
            for version, codec in codecs.items()
        }
        self.selector = selector
        self.table = table
        self.ids = ids
        self.master_node_id = master_node_id
        self.settings = settings
        self.clock = clock
        self.observer = observer or DispatchObserver()

    def session(self, request: PreparedRequest) -> PDSession:
        return PDSession(self, request)

    def codec_for(self, node: NodeConnection) -> LightLLMCodec:
        return self.codecs[node.info.version]


class PDSession:
    __slots__ = (
        "_d",
        "_req",
        "_view",
        "_deadline",
        "_state",
        "_prefill",
        "_decode",
        "_sink",
        "finished",
        "closed",
        "_flow",
    )

    def __init__(self, dispatcher: PDDispatcher, request: PreparedRequest) -> None:
        self._d = dispatcher
        self._req = request
        self._view = request.view or RequestView(
            request.prompt_tokens, request.parameters.max_new_tokens
        )
        self._deadline = dispatcher.clock() + dispatcher.settings.request_timeout_s
        self._state: RequestState | None = None
        self._prefill: NodeConnection | None = None
        self._decode: NodeConnection | None = None
        self._sink: Sink | None = None
        self.finished = False
        self.closed = False
        self._flow: BlockFlow | None = None  # v1.2.0

    @property
    def wants_decode(self) -> bool:
        return self._flow is not None or self._req.parameters.max_new_tokens > 1

    @property
    def decode_tokens(self) -> int:
        return self._req.prompt_tokens + self._req.parameters.max_new_tokens

    async def first(self) -> list[TokenEntry]:
        """The first token, with the decode node already holding the KV cache (when needed)."""
        tried: list[NodeConnection] = []
        attempt = 1
        while True:
            try:
                return await self._attempt(tried)
            except ApiError as exc:
                blamed = self._blame(exc)
                if blamed is None or attempt >= self._d.settings.max_attempts or self.closed:
                    await self.close()
                    raise
                log.warning("retrying group %s on another pair: %s", self.group_id, exc.message)
                await self._abandon()
                self._d.observer.retried(exc)
                attempt += 1
            except BaseException:
                await self.close()
                raise

    async def next(self, sink: Sink | None = None, lane: object | None = None) -> list[TokenEntry]:
        """The next tokens from the decode node.

        Meanwhile ``sink`` gets the tokens that end nothing as they arrive (see ``tracking``);
        what it takes counts as delivered, and is not returned. ``lane``: the compiled relay
        of ``_push`` and that sink (see ``pdmaster/_lane.c``).
        """
        state, decode = self._state, self._decode
        assert state is not None and decode is not None and not self.finished
        self._sink = sink
        try:
            entries = self._after(
                await state.take(
                    *self.until(self._d.settings.token_idle_timeout_s),
                    "token",
                    self._push if sink is not None else None,
                    lane,
                )
            )
            if self._flow is not None and self._flow.block_ended:
                self._flow.end_block(state)
                await self._start_block(self._flow)
        except ApiError as exc:
            self._record_failure(decode, exc)
            await self.close()
            raise
        except BaseException:
            await self.close()
            raise
        if self.finished:
            decode.breaker.record(True)
        return entries

    @property
    def deadline(self) -> float:
        """The request's deadline, on the dispatcher's clock."""
        return self._deadline

    @property
    def idle_timeout(self) -> float:
        return self._d.settings.token_idle_timeout_s

    def _push(self, entries: list[TokenEntry], now: float) -> bool:
        """Offer tokens to the sink; a last token or a bad status goes the way of ``next``.

        ``pdmaster/_lane.c`` does the same (and reads ``_flow``): change both together."""
        if self._flow is not None and not self._flow.streams_through:
            return False  # counts to rewrite, or a block's P to release: the way of ``next``
        for entry in entries:
            if entry[3].status:
                return False
        state, sink = self._state, self._sink
        left = self._deadline - now
        if state is None or sink is None or left <= 0 or not sink(entries, now):
            return False
        seconds = min(self._d.settings.token_idle_timeout_s, left)
        state.extend_wait(now + seconds, seconds)
        return True

    @property
    def group_id(self) -> int | None:
        return self._state.group_id if self._state else None

    async def close(self) -> None:
        """Forget the request; ABORT it on its nodes unless it finished normally."""
        if self.closed:
            return
        self.closed = True
        self._sink = None  # a run's bound method: the two would be a reference cycle
        await self._abandon(abort=not self.finished)

    async def _attempt(self, tried: list[NodeConnection]) -> list[TokenEntry]:
        d = self._d
        self._flow = None
        refused = self._req.parameters.refusals(d.versions)
        prefill, decode = d.selector.pick_pair(self._view, tried, self.decode_tokens, refused)
        tried.append(prefill)
        if decode is not None:
            tried.append(decode)
        codec = d.codec_for(prefill)
        if prefill.info.version == V12:
            assert decode is not None
            return await self._attempt_v12(prefill, decode)
        state = RequestState(await self.new_group_id())
        self._state, self._prefill, self._decode = state, prefill, decode
        d.table.add(state)
        prefill.attach(state, self._req.prompt_tokens)
        if decode is not None:
            decode.attach(state, self.decode_tokens)
            state.kv_host = decode.peer_host
        state.source = prefill
        filled = d.sampling_params[codec.version]
        await prefill.send(
            lambda: prefill_req(
                codec, filled, self._req, state.group_id, decode, d.master_node_id()
            )
        )
        first = self._after(
            await state.take(*self.until(d.settings.first_token_timeout_s), "first token")
        )
        prefill.breaker.record(True)
        prefill.detach(state, self._req.prompt_tokens)  # its part is done; it may leave now
        if self.finished or decode is None:
            return first
        status = await state.kv_status(*self.until(d.settings.kv_move_timeout_s))
        entry = first[0]
        prompt_ids = entry[2].get("prompt_ids")
        if not isinstance(prompt_ids, list):
            raise NodeFailed("the prefill node's first token carries no prompt_ids", node=prefill)
        state.source = decode
        decode_codec = d.codec_for(decode)
        decode_filled = d.sampling_params[decode_codec.version]
        await decode.send(
            lambda: decode_req(
                decode_codec,
                decode_filled,
                self._req,
                state.group_id,
                prompt_ids + [entry[2]["id"]],
                status,
            )
        )
        return first

    async def new_group_id(self) -> int:
        """The next group request id, waiting (for the config server's id ranges) no longer
        than the first token may take."""
        _, seconds = self.until(self._d.settings.first_token_timeout_s)
        group_id = self._d.ids.take()  # at hand, as nearly always: no timer to arm
        if group_id is not None:
            return group_id
        try:
            async with asyncio.timeout(seconds):
                return await self._d.ids.next()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no group request id within {seconds:.1f} s (config server id ranges)",
                code="id_range_timeout",
            ) from None

    async def _attempt_v12(
        self, prefill: NodeConnection, decode: NodeConnection
    ) -> list[TokenEntry]:
        d, req = self._d, self._req
        self._prefill, self._decode = prefill, decode
        flow = BlockFlow(
            self,
            d.table,
            d.settings,
            d.codec_for(prefill),
            prefill,
            decode,
            req.prompt,
            req.prompt_tokens,
            req.parameters.max_new_tokens,
        )
        self._flow = flow
        await self._start_block(flow)
        state = self._state
        assert state is not None
        return self._after(
            await state.take(*self.until(d.settings.first_token_timeout_s), "first token")
        )

    async def _start_block(self, flow: BlockFlow) -> None:
        self._state = await flow.open_block()
        await flow.run_block(self._state)

    def master_node_id(self) -> int:
        return self._d.master_node_id()

    def _blame(self, exc: ApiError) -> NodeConnection | None:
        """The node at fault for a retryable failure, with its breaker told; None: don't retry."""
        if isinstance(exc, NodeFailed) and isinstance(exc.node, NodeConnection):
            node: NodeConnection | None = exc.node
        elif isinstance(exc, DeadlineExceeded) and exc.code in RETRYABLE_TIMEOUTS:
            node = self._prefill if RETRYABLE_TIMEOUTS[exc.code] == "prefill" else self._decode
        else:
            return None
        if node is not None:
            self._record_failure(node, exc)
        return node

    def _record_failure(self, node: NodeConnection, exc: ApiError) -> None:
        hard = isinstance(exc, NodeFailed)
        node.breaker.record(False, may_open=hard or self._d.selector.may_open_breaker(node))

    async def _abandon(self, abort: bool = True) -> None:
        state = self._state
        if state is None:
            return
        self._d.table.remove(state)
        if self._prefill is not None:
            self._prefill.detach(state, self._req.prompt_tokens)
        if self._decode is not None:
            self._decode.detach(state, self.decode_tokens)
        targets = [n for n in (self._prefill, self._decode) if n is not None and not n.closed]
        if not abort:
            # Finished at the prefill token: the decode node may hold the moved KV cache.
            targets = [n for n in targets if n is self._decode and state.source is not n]
        if targets:
            for node in targets:
                message = self._d.codec_for(node).encode_abort(state.group_id)
                try:
                    await asyncio.shield(node.send(message))
                except (NodeFailed, asyncio.CancelledError):
                    pass
        self._state = self._prefill = self._decode = None

    def _after(self, entries: list[TokenEntry]) -> list[TokenEntry]:
        status, flow = entries[-1][3].status, self._flow
        if flow is not None and (error := flow.finish_error(status)) is not None:
            raise error
        if status not in (0, 1, 2):
            raise NodeFailed(f"node sent unknown finish status {status}", code="bad_node_reply")
        if flow is not None:
            entries = flow.after(self._state, entries)
            status = entries[-1][3].status
        if status != 0 or not self.wants_decode:
            self.finished = True
        return entries

    def until(self, stage: float) -> tuple[float, float]:
        """(deadline, seconds) of a wait: the stage's timeout, cut by the request's deadline."""
        now = self._d.clock()
        left = self._deadline - now
        if left <= 0:
            raise DeadlineExceeded("request deadline passed", code="request_timeout")
        seconds = min(stage, left)
        return now + seconds, seconds

    def req_params(
        self, codec: LightLLMCodec, max_new_tokens: int, group_id: int
    ) -> SamplingParamsBase:
        return req_params(
            self._d.sampling_params[codec.version], self._req, max_new_tokens, group_id
        )
