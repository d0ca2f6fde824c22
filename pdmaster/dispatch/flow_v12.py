"""LightLLM v1.2.0's PD flow (decode first), one ``BlockFlow`` per attempt on a pair:

P: REQ(prompt, max_new_tokens=1) -> PD_UPLOAD_PREFILL_PROMPT_IDS
D: REQ(prompt_ids, the block's budget) -> PDUpKVStatus on /kv_move_status (KV slots reserved)
P: PD_REQ_DECODE_NODE_INFO -> prefill, KV written to D -> tokens from P and from D
Only D's tokens are relayed: D's first token (the same as P's) is the sign that the KV cache
arrived. Outputs past ``block_tokens`` run as LightLLM's master runs them, in blocks with
fresh group ids on the same pair (prompt = the prompt + the text so far), and reach the
client as one stream: counts go on, only the last block's finish status shows.

The session owns each block's ``RequestState`` from ``open_block`` on (it abandons it on a
failure) and takes the tokens; the flow sends the messages and rewrites what comes back.
"""

from __future__ import annotations

from typing import Protocol

from pdmaster.errors import NodeFailed
from pdmaster.nodes.pool import NodeConnection
from pdmaster.nodes.tracking import RequestState, RequestTable
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import TokenEntry
from pdwire.structs import FinishStatus, SamplingParamsBase

FINISH_ERRORS = {3: "node_aborted", 4: "node_error"}  # v1.2.0's FINISHED_ABORTED, _ERROR


class BlockHost(Protocol):
    """What a flow takes from its session: waits cut by the request's deadline, group ids,
    the request's sampling parameters and the master's node id."""

    def until(self, stage: float) -> tuple[float, float]: ...

    async def new_group_id(self) -> int: ...

    def req_params(
        self, codec: LightLLMCodec, max_new_tokens: int, group_id: int
    ) -> SamplingParamsBase: ...

    def master_node_id(self) -> int: ...


class BlockSettings(Protocol):
    @property
    def block_tokens(self) -> int: ...

    @property
    def prompt_ids_timeout_s(self) -> float: ...

    @property
    def kv_move_timeout_s(self) -> float: ...


class BlockFlow:
    __slots__ = (
        "_host",
        "_table",
        "_settings",
        "_codec",
        "_prefill",
        "_decode",
        "_prompt",
        "_prompt_tokens",
        "_decode_tokens",
        "_left",
        "_offset",
        "_text",
        "prefill_pending",
        "block_ended",
    )

    def __init__(
        self,
        host: BlockHost,
        table: RequestTable,
        settings: BlockSettings,
        codec: LightLLMCodec,
        prefill: NodeConnection,
        decode: NodeConnection,
        prompt: str,
        prompt_tokens: int,
        max_new_tokens: int,
    ) -> None:
        self._host = host
        self._table = table
        self._settings = settings
        self._codec = codec
        self._prefill = prefill
        self._decode = decode
        self._prompt = prompt
        self._prompt_tokens = prompt_tokens
        self._decode_tokens = prompt_tokens + max_new_tokens
        self._left = max_new_tokens  # tokens still to generate
        self._offset = 0  # tokens of the blocks before this one
        # the text so far, kept when blocks may follow
        self._text: list[str] | None = [] if max_new_tokens > settings.block_tokens else None
        self.prefill_pending = False  # P counts this block until D's first token
        self.block_ended = False  # a block ended by length with tokens left: start the next

    @property
    def streams_through(self) -> bool:
        """Tokens may go out as they come: no counts to rewrite, no P to release."""
        return self._text is None and not self.prefill_pending

    async def open_block(self) -> RequestState:
        """A fresh group id on the pair, counted on both nodes."""
        state = RequestState(await self._host.new_group_id())
        self._table.add(state)
        prefill, decode = self._prefill, self._decode
        prefill.attach(state, self._prompt_tokens)
        decode.attach(state, self._decode_tokens)
        self.prefill_pending = True
        state.source, state.uploader, state.kv_host = decode, prefill, decode.peer_host
        return state

    async def run_block(self, state: RequestState) -> None:
        """REQ to P, its prompt ids, REQ to D, D's KV reservation, D's descriptor to P."""
        codec, settings, until = self._codec, self._settings, self._host.until
        prompt = self._prompt + "".join(self._text or ())
        budget = min(self._left, settings.block_tokens)
        group_id = state.group_id
        await self._prefill.send(lambda: codec.encode_req(prompt, self._params(1, group_id)))
        prompt_ids = await state.prompt_ids(*until(settings.prompt_ids_timeout_s))
        await self._decode.send(
            lambda: codec.encode_req(prompt_ids, self._params(budget, group_id))
        )
        info = await state.kv_status(*until(settings.kv_move_timeout_s))
        await self._prefill.send(lambda: codec.encode_decode_node_info(group_id, info))

    def end_block(self, old: RequestState) -> None:
        """The block ended by length with tokens left: forget its group id."""
        self.block_ended = False
        self._table.remove(old)
        self._prefill.detach(old, self._prompt_tokens)
        self._decode.detach(old, self._decode_tokens)

    def _params(self, max_new_tokens: int, group_id: int) -> SamplingParamsBase:
        params = self._host.req_params(self._codec, max_new_tokens, group_id)
        params.pd_master_node_id.node_id = self._host.master_node_id()
        return params

    def finish_error(self, status: int) -> NodeFailed | None:
        """The failure a v1.2.0 finish status reports (None: not a failure)."""
        if status not in FINISH_ERRORS:
            return None
        what = "aborted" if status == 3 else "failed (KV hand-off)"
        return NodeFailed(
            f"the decode node {what} the request",
            code=FINISH_ERRORS[status],
            node=self._prefill if status == 4 and self.prefill_pending else self._decode,
        )

    def after(self, state: RequestState | None, entries: list[TokenEntry]) -> list[TokenEntry]:
        """Release P at D's first token; stitch blocks into one stream."""
        if self.prefill_pending and state is not None:
            self.prefill_pending = False
            self._prefill.breaker.record(True)
            self._prefill.detach(state, self._prompt_tokens)
        if self._text is None:
            return entries
        offset, out = self._offset, []
        for sub_id, text, meta, status in entries:
            count = meta.get("count_output_tokens")
            if not isinstance(count, int):
                raise NodeFailed("a token carries no count_output_tokens", code="bad_node_reply")
            meta["count_output_tokens"] = count + offset
            meta["prompt_tokens"] = self._prompt_tokens
            self._text.append(text)
            if status.status == 2 and self._left - count > 0:
                self._left -= count
                self._offset += count
                self.block_ended = True
                status = FinishStatus(0)
            out.append((sub_id, text, meta, status))
        return out
