"""A request's REQ frames: its prefill node's and its decode node's (v1.1.0 and fc72ffa), and
the SamplingParams of each (v1.2.0's blocks too).

A frame is built in place: the request's filled struct (``RequestParams``, one per parameter
set) is copied once, into the frame, and the fields of the phase are set on a struct over
the frame's bytes. Where the general pickler must write it, the fields are set on a copy
and ``encode_req`` writes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pdmaster.nodes.pool import NodeConnection
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import UpKVStatus
from pdwire.sampling import FilledParams
from pdwire.structs import DecodeNode, SamplingParamsBase

if TYPE_CHECKING:
    from pdmaster.dispatch.session import PreparedRequest


class RequestParams(FilledParams[SamplingParamsBase]):
    """``FilledParams`` that also keep, for a parameter set with stop sequences, a copy of
    its struct with those set too: the requests that share the set share its stop ids (see
    ``RunParameters.stop_token_ids``), so each frame copies them rather than sets them
    (~3 us a frame)."""

    def __init__(self, new: Callable[[], SamplingParamsBase], size: int = 64) -> None:
        super().__init__(new, size)
        self._stop_size = size
        # (ids of the struct, stop ids, stop texts) -> those, kept alive (so their ids stay
        # theirs), and the struct with the stop sequences set
        self._stopped: dict[tuple[int, int, int], tuple[object, object, object, Any]] = {}

    def for_request(self, request: PreparedRequest) -> SamplingParamsBase:
        """The struct of the request's values and stop sequences, perhaps shared: read it or
        copy it, never change it."""
        done = self.filled(request.parameters.wire_values)
        if not request.stop_token_ids:  # a filled struct holds none
            return done
        stop_ids, texts = request.stop_token_ids, request.parameters.stop_sequences
        key = (id(done), id(stop_ids), id(texts))
        kept = self._stopped.get(key)
        if kept is not None and kept[0] is done and kept[1] is stop_ids and kept[2] is texts:
            stopped: SamplingParamsBase = kept[3]
            return stopped
        stopped = type(done).from_buffer_copy(done)
        stopped.set_stop_sequences(stop_ids, texts)
        if len(self._stopped) >= self._stop_size:
            del self._stopped[next(iter(self._stopped))]
        self._stopped[key] = (done, stop_ids, texts, stopped)
        return stopped


def prefill_req(
    codec: LightLLMCodec,
    filled: RequestParams,
    request: PreparedRequest,
    group_id: int,
    decode: NodeConnection | None,
    master: int,
) -> bytes | bytearray:
    """The prefill node's REQ: the prompt, one new token, the KV cache to move to ``decode``
    (None: a one-token request) for a master of id ``master``."""
    prompt = request.prompt
    frame, params = _req_frame(codec, filled, request, prompt, 1, group_id)
    if decode is not None:
        slot = params.move_kv_to_decode_node  # a view: it sees the copy made next
        params.move_kv_to_decode_node = decode_target(type(slot), decode, master)
        slot.max_new_tokens = request.parameters.max_new_tokens - 1
    return frame if frame is not None else codec.encode_req(prompt, params)


def decode_req(
    codec: LightLLMCodec,
    filled: RequestParams,
    request: PreparedRequest,
    group_id: int,
    prompt_ids: list[int],
    status: UpKVStatus,
) -> bytes | bytearray:
    """The decode node's REQ: the prompt's ids and the first token, the rest of the tokens,
    on the data-parallel rank that holds the KV cache (``status``)."""
    max_new_tokens = request.parameters.max_new_tokens - 1
    frame, params = _req_frame(codec, filled, request, prompt_ids, max_new_tokens, group_id)
    params.suggested_dp_index = status.dp_index
    return frame if frame is not None else codec.encode_req(prompt_ids, params)


def req_params(
    filled: RequestParams,
    request: PreparedRequest,
    max_new_tokens: int,
    group_id: int,
) -> SamplingParamsBase:
    """A fresh SamplingParams of ``request`` with these fields set."""
    done = filled.for_request(request)
    params = type(done).from_buffer_copy(done)
    _set_fields(params, request, max_new_tokens, group_id)
    return params


def decode_target(kind: type[DecodeNode], decode: NodeConnection, master: int) -> DecodeNode:
    """A prefill REQ's ``move_kv_to_decode_node`` for ``decode``, but its max_new_tokens:
    filled once per node connection (whose info never changes) and master id, and kept
    on the connection, not filled field by field per request."""
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


def _req_frame(
    codec: LightLLMCodec,
    filled: RequestParams,
    request: PreparedRequest,
    prompt: str | list[int],
    max_new_tokens: int,
    group_id: int,
) -> tuple[bytearray | None, SamplingParamsBase]:
    """A REQ frame with this request's fields set, and its struct, to set more on: a
    struct over the frame's bytes, so that a field set on it is set in the frame. Where
    the general pickler must write it, no frame, and a struct to ``encode_req``."""
    built = codec.req_frame(prompt, filled.for_request(request))
    if built is None:
        return None, req_params(filled, request, max_new_tokens, group_id)
    _set_fields(built[1], request, max_new_tokens, group_id)
    return built


def _set_fields(
    params: SamplingParamsBase, request: PreparedRequest, max_new_tokens: int, group_id: int
) -> None:
    params.max_new_tokens = max_new_tokens
    params.min_new_tokens = min(request.parameters.min_new_tokens, max_new_tokens)
    params.group_request_id = group_id
