"""LightLLM's two-phase PD dispatch, one ``PDSession`` per client request.

v1.1.0 and fc72ffa nodes:
prefill node P: REQ(max_new_tokens=1, move_kv_to_decode_node=D) -> first token + prompt_ids
decode node D:  kv_move_status -> REQ(prompt_ids + [first token], suggested_dp_index) -> tokens

v1.2.0 nodes (decode first):
P: REQ(prompt, max_new_tokens=1) -> PD_UPLOAD_PREFILL_PROMPT_IDS
D: REQ(prompt_ids, the block's budget) -> PDUpKVStatus on /kv_move_status (KV slots reserved)
P: PD_REQ_DECODE_NODE_INFO -> prefill, KV written to D -> tokens from P and from D
Only D's tokens are relayed: D's first token (the same as P's) is the sign that the KV cache
arrived. Outputs past ``block_tokens`` run as LightLLM's master runs them, in blocks with
fresh group ids on the same pair (prompt = the prompt + the text so far), and reach the
client as one stream: counts go on, only the last block's finish status shows.

The first token reaches the client only once the decode node holds the KV cache, so a
failed prefill or a hand-off past its deadline can still be retried, once, on another
pair (the abandoned nodes get an ABORT). After the first token a failure ends the stream.
Every wait has a deadline; any failure or early close ABORTs the request on its nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pdmaster.errors import ApiError, DeadlineExceeded, NodeFailed
from pdmaster.nodes.pool import V12, NodeConnection
from pdmaster.nodes.tracking import RequestState, RequestTable, Sink
from pdmaster.routing.policies import RequestView
from pdmaster.routing.selection import PairSelector
from pdwire.client import RunParameters
from pdwire.lightllm import LightLLMCodec, TokenEntry, UpKVStatus
from pdwire.sampling import FilledParams
from pdwire.structs import FinishStatus, SamplingParamsBase

log = logging.getLogger(__name__)

RETRYABLE_TIMEOUTS = {
    "first_token_timeout": "prefill",
    "kv_move_timeout": "decode",
    "prompt_ids_timeout": "prefill",
}
FINISH_ERRORS = {3: "node_aborted", 4: "node_error"}  # v1.2.0's FINISHED_ABORTED, _ERROR


@dataclass(frozen=True)
class DispatchSettings:
    first_token_timeout_s: float = 60.0
    kv_move_timeout_s: float = 10.0
    token_idle_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    max_attempts: int = 2
    prompt_ids_timeout_s: float = 10.0  # v1.2.0: P's prompt-id upload (LightLLM: 60)
    block_tokens: int = 2048  # v1.2.0: LightLLM's LIGHTLLM_PD_SPLIT_MAX_NEW_TOKENS


@dataclass(frozen=True, slots=True)
class PreparedRequest:
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
        next_group_id: Callable[[], Awaitable[int]],
        master_node_id: Callable[[], int],
        settings: DispatchSettings,
        clock: Callable[[], float],
        observer: DispatchObserver | None = None,
    ) -> None:
        self.codecs = codecs
        self.sampling_params = {
            version: FilledParams(codec.layout.new_sampling_params)
            for version, codec in codecs.items()
        }
        self.selector = selector
        self.table = table
        self.next_group_id = next_group_id
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
        "_v12",
        "_prefill_pending",
        "_left",
        "_offset",
        "_block_ended",
        "_text",
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
        # v1.2.0
        self._v12 = False
        self._prefill_pending = False  # P counts this block until D's first token
        self._left = request.parameters.max_new_tokens  # tokens still to generate
        self._offset = 0  # tokens of the blocks before this one
        self._block_ended = False  # a block ended by length with tokens left: start the next
        self._text: list[str] | None = None  # the text so far, kept when blocks may follow

    @property
    def wants_decode(self) -> bool:
        return self._v12 or self._req.parameters.max_new_tokens > 1

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

    async def next(self, sink: Sink | None = None) -> list[TokenEntry]:
        """The next tokens from the decode node.

        Meanwhile ``sink`` gets the tokens that end nothing as they arrive (see ``tracking``);
        what it takes counts as delivered, and is not returned.
        """
        state, decode = self._state, self._decode
        assert state is not None and decode is not None and not self.finished
        self._sink = sink
        try:
            entries = self._after(
                await state.take(
                    *self._until(self._d.settings.token_idle_timeout_s),
                    "token",
                    self._push if sink is not None else None,
                )
            )
            if self._block_ended:
                await self._next_block()
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

    def _push(self, entries: list[TokenEntry]) -> bool:
        """Offer tokens to the sink; a last token or a bad status goes the way of ``next``."""
        if self._text is not None or self._prefill_pending:
            return False  # counts to rewrite, or a block's P to release: the way of ``next``
        for entry in entries:
            if entry[3].status:
                return False
        state, sink = self._state, self._sink
        now = self._d.clock()
        left = self._deadline - now
        if state is None or sink is None or left <= 0 or not sink(entries):
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
        self._v12 = False
        params = self._req.parameters
        refused = {
            version: field
            for version, codec in d.codecs.items()
            if (field := params.not_carried_by(codec.layout.SamplingParams)) is not None
        }
        prefill, decode = d.selector.pick_pair(self._view, tried, self.decode_tokens, refused)
        tried += [n for n in (prefill, decode) if n is not None]
        codec = d.codec_for(prefill)
        if prefill.info.version == V12:
            assert decode is not None
            return await self._attempt_v12(prefill, decode)
        state = RequestState(await self._group_id())
        self._state, self._prefill, self._decode = state, prefill, decode
        d.table.add(state)
        prefill.attach(state, self._req.prompt_tokens)
        if decode is not None:
            decode.attach(state, self.decode_tokens)
            state.kv_host = decode.peer_host
        state.source = prefill
        await prefill.send(
            lambda: codec.encode_req(self._req.prompt, self._prefill_params(state, decode))
        )
        first = self._after(
            await state.take(*self._until(d.settings.first_token_timeout_s), "first token")
        )
        prefill.breaker.record(True)
        prefill.detach(state, self._req.prompt_tokens)  # its part is done; it may leave now
        if self.finished or decode is None:
            return first
        status = await state.kv_status(*self._until(d.settings.kv_move_timeout_s))
        entry = first[0]
        prompt_ids = entry[2].get("prompt_ids")
        if not isinstance(prompt_ids, list):
            raise NodeFailed("the prefill node's first token carries no prompt_ids", node=prefill)
        state.source = decode
        await decode.send(lambda: self._decode_req(state, prompt_ids + [entry[2]["id"]], status))
        return first

    async def _group_id(self) -> int:
        """The next group request id, waiting (for the config server's id ranges) no longer
        than the first token may take."""
        _, seconds = self._until(self._d.settings.first_token_timeout_s)
        try:
            async with asyncio.timeout(seconds):
                return await self._d.next_group_id()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no group request id within {seconds:.1f} s (config server id ranges)",
                code="id_range_timeout",
            ) from None

    def _decode_req(self, state: RequestState, prompt_ids: list[int], status: UpKVStatus) -> bytes:
        assert self._decode is not None
        codec = self._d.codec_for(self._decode)
        params = self._params(codec, self._req.parameters.max_new_tokens - 1, state.group_id)
        params.suggested_dp_index = status.dp_index
        return codec.encode_req(prompt_ids, params)

    # -- v1.2.0 --------------------------------------------------------------------------
    async def _attempt_v12(
        self, prefill: NodeConnection, decode: NodeConnection
    ) -> list[TokenEntry]:
        d = self._d
        self._v12 = True
        self._prefill, self._decode = prefill, decode
        self._left = self._req.parameters.max_new_tokens
        self._offset = 0
        self._text = [] if self._left > d.settings.block_tokens else None
        await self._start_block(self._req.prompt)
        state = self._state
        assert state is not None
        return self._after(
            await state.take(*self._until(d.settings.first_token_timeout_s), "first token")
        )

    async def _start_block(self, prompt: str) -> None:
        """REQ to P, its prompt ids, REQ to D, D's KV reservation, D's descriptor to P."""
        d = self._d
        prefill, decode = self._prefill, self._decode
        assert prefill is not None and decode is not None
        codec = d.codec_for(prefill)
        budget = min(self._left, d.settings.block_tokens)
        state = RequestState(await self._group_id())
        self._state = state
        d.table.add(state)
        prefill.attach(state, self._req.prompt_tokens)
        decode.attach(state, self.decode_tokens)
        self._prefill_pending = True
        state.source, state.uploader, state.kv_host = decode, prefill, decode.peer_host
        group_id = state.group_id
        await prefill.send(lambda: codec.encode_req(prompt, self._params_v12(codec, 1, group_id)))
        prompt_ids = await state.prompt_ids(*self._until(d.settings.prompt_ids_timeout_s))
        await decode.send(
            lambda: codec.encode_req(prompt_ids, self._params_v12(codec, budget, group_id))
        )
        info = await state.kv_status(*self._until(d.settings.kv_move_timeout_s))
        await prefill.send(lambda: codec.encode_decode_node_info(group_id, info))

    async def _next_block(self) -> None:
        """The last block ended by length with tokens left: go on with a fresh group id."""
        self._block_ended = False
        old = self._state
        assert old is not None and self._text is not None
        self._d.table.remove(old)
        for node in (self._prefill, self._decode):
            if node is not None:
                node.detach(
                    old, self.decode_tokens if node is self._decode else self._req.prompt_tokens
                )
        await self._start_block(self._req.prompt + "".join(self._text))

    def _params_v12(
        self, codec: LightLLMCodec, max_new_tokens: int, group_id: int
    ) -> SamplingParamsBase:
        params = self._params(codec, max_new_tokens, group_id)
        params.pd_master_node_id.node_id = self._d.master_node_id()
        return params

    def _after_v12(self, entries: list[TokenEntry]) -> list[TokenEntry]:
        """Release P at D's first token; stitch blocks into one stream."""
        if self._prefill_pending and self._prefill is not None and self._state is not None:
            self._prefill_pending = False
            self._prefill.breaker.record(True)
            self._prefill.detach(self._state, self._req.prompt_tokens)
        if self._text is None:
            return entries
        offset, out = self._offset, []
        for sub_id, text, meta, status in entries:
            count = meta.get("count_output_tokens")
            if not isinstance(count, int):
                raise NodeFailed("a token carries no count_output_tokens", code="bad_node_reply")
            meta["count_output_tokens"] = count + offset
            meta["prompt_tokens"] = self._req.prompt_tokens
            self._text.append(text)
            if status.status == 2 and self._left - count > 0:
                self._left -= count
                self._offset += count
                self._block_ended = True
                status = FinishStatus(0)
            out.append((sub_id, text, meta, status))
        return out

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
        status = entries[-1][3].status
        if status in FINISH_ERRORS and self._v12:
            what = "aborted" if status == 3 else "failed (KV hand-off)"
            raise NodeFailed(
                f"the decode node {what} the request",
                code=FINISH_ERRORS[status],
                node=self._prefill if status == 4 and self._prefill_pending else self._decode,
            )
        if status not in (0, 1, 2):
            raise NodeFailed(f"node sent unknown finish status {status}", code="bad_node_reply")
        if self._v12:
            entries = self._after_v12(entries)
            status = entries[-1][3].status
        if status != 0 or not self.wants_decode:
            self.finished = True
        return entries

    def _until(self, stage: float) -> tuple[float, float]:
        """(deadline, seconds) of a wait: the stage's timeout, cut by the request's deadline."""
        now = self._d.clock()
        left = self._deadline - now
        if left <= 0:
            raise DeadlineExceeded("request deadline passed", code="request_timeout")
        seconds = min(stage, left)
        return now + seconds, seconds

    def _prefill_params(
        self, state: RequestState, decode: NodeConnection | None
    ) -> SamplingParamsBase:
        assert self._prefill is not None
        params = self._params(self._d.codec_for(self._prefill), 1, state.group_id)
        if decode is not None:
            params.move_kv_to_decode_node.fill(
                node_id=decode.node_id,
                ip=decode.info.host,
                rpyc_port=decode.info.rpyc_port or 0,
                max_new_tokens=self._req.parameters.max_new_tokens - 1,
                pd_master_node_id=self._d.master_node_id(),
            )
        return params

    def _params(
        self, codec: LightLLMCodec, max_new_tokens: int, group_id: int
    ) -> SamplingParamsBase:
        p = self._req.parameters
        params = self._d.sampling_params[codec.version](p.wire_values)
        params.max_new_tokens = max_new_tokens
        params.min_new_tokens = min(p.min_new_tokens, max_new_tokens)
        params.group_request_id = group_id
        if self._req.stop_token_ids:  # a filled struct holds none
            params.set_stop_sequences(self._req.stop_token_ids, p.stop_sequences)
        return params
