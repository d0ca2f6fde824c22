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
from pdmaster.dispatch.ids import IdSource
from pdmaster.errors import ApiError, DeadlineExceeded, NodeFailed
from pdmaster.nodes.pool import V12, NodeConnection
from pdmaster.nodes.tracking import RequestState, RequestTable, Sink
from pdmaster.routing.policies import RequestView
from pdmaster.routing.selection import PairSelector
from pdwire.client import RunParameters, refusals
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import TokenEntry, UpKVStatus
from pdwire.sampling import FilledParams
from pdwire.structs import DecodeNode, SamplingParamsBase

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
            version: FilledParams(codec.layout.new_sampling_params)
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

    def decode_target(self, kind: type[DecodeNode], decode: NodeConnection) -> DecodeNode:
        """A prefill REQ's ``move_kv_to_decode_node`` for ``decode``, but its max_new_tokens:
        filled once per node connection (whose info never changes) and master id, and kept
        on the connection, not filled field by field per request."""
        master = self.master_node_id()
        kept = decode.hand_off
        if kept is not None and kept[0] is kind and kept[1] == master:
            target: DecodeNode = kept[2]
            return target
        info = decode.info
        target = kind()
        target.fill(
            node_id=decode.node_id,
            ip=info.host,
            rpyc_port=info.rpyc_port or 0,
            max_new_tokens=0,  # set per request
            pd_master_node_id=master,
        )
        decode.hand_off = (kind, master, target)
        return target


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
        await self._abandon(abort=not self.finished)

    async def _attempt(self, tried: list[NodeConnection]) -> list[TokenEntry]:
        d = self._d
        self._flow = None
        refused = refusals(d.versions, self._req.parameters.wire_values)
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
        await prefill.send(lambda: self._prefill_req(codec, state, decode))
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
        await decode.send(lambda: self._decode_req(state, prompt_ids + [entry[2]["id"]], status))
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

    def _decode_req(
        self, state: RequestState, prompt_ids: list[int], status: UpKVStatus
    ) -> bytes | bytearray:
        assert self._decode is not None
        codec = self._d.codec_for(self._decode)
        max_new_tokens = self._req.parameters.max_new_tokens - 1
        frame, params = self._req_frame(codec, prompt_ids, max_new_tokens, state.group_id)
        params.suggested_dp_index = status.dp_index
        return frame if frame is not None else codec.encode_req(prompt_ids, params)

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

    def _prefill_req(
        self, codec: LightLLMCodec, state: RequestState, decode: NodeConnection | None
    ) -> bytes | bytearray:
        prompt = self._req.prompt
        frame, params = self._req_frame(codec, prompt, 1, state.group_id)
        if decode is not None:
            slot = params.move_kv_to_decode_node  # a view: it sees the copy made next
            params.move_kv_to_decode_node = self._d.decode_target(type(slot), decode)
            slot.max_new_tokens = self._req.parameters.max_new_tokens - 1
        return frame if frame is not None else codec.encode_req(prompt, params)

    def _req_frame(
        self, codec: LightLLMCodec, prompt: str | list[int], max_new_tokens: int, group_id: int
    ) -> tuple[bytearray | None, SamplingParamsBase]:
        """A REQ frame with this request's fields set, and its struct, to set more on: a
        struct over the frame's bytes, so that a field set on it is set in the frame. Where
        the general pickler must write it, no frame, and a struct to ``encode_req``."""
        filled = self._d.sampling_params[codec.version].filled(self._req.parameters.wire_values)
        built = codec.req_frame(prompt, filled)
        if built is None:
            params = type(filled).from_buffer_copy(filled)
            self._set_fields(params, max_new_tokens, group_id)
            return None, params
        self._set_fields(built[1], max_new_tokens, group_id)
        return built

    def req_params(
        self, codec: LightLLMCodec, max_new_tokens: int, group_id: int
    ) -> SamplingParamsBase:
        params = self._d.sampling_params[codec.version](self._req.parameters.wire_values)
        self._set_fields(params, max_new_tokens, group_id)
        return params

    def _set_fields(self, params: SamplingParamsBase, max_new_tokens: int, group_id: int) -> None:
        p = self._req.parameters
        params.max_new_tokens = max_new_tokens
        params.min_new_tokens = min(p.min_new_tokens, max_new_tokens)
        params.group_request_id = group_id
        if self._req.stop_token_ids:  # a filled struct holds none
            params.set_stop_sequences(self._req.stop_token_ids, p.stop_sequences)
