"""A request's REQ frames: the bytes the general pickler writes for a struct filled field by
field, whether the struct of its parameter set (and stop sequences) is filled or found."""

from __future__ import annotations

import pytest

from pdmaster.dispatch.frames import RequestParams, decode_req, prefill_req, req_params
from pdmaster.dispatch.session import PreparedRequest
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from pdwire.client import GenerateParameters
from pdwire.lightllm import LightLLMCodec
from pdwire.mirrorpickle import dumps
from pdwire.pd_io import MultimodalParams, ObjType, UpKVStatus
from pdwire.sampling import fill
from pdwire.structs import SamplingParamsBase

TOKENIZER = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
SETS = [
    GenerateParameters(max_new_tokens=8),
    GenerateParameters(max_new_tokens=8, stop_sequences=["\n\n", "Observation:"]),
    GenerateParameters(max_new_tokens=9, min_new_tokens=3, stop_sequences=["</s>"], top_k=4),
]


def request(params: GenerateParameters, prompt: str = "a prompt") -> PreparedRequest:
    run = params.for_run()
    return PreparedRequest(prompt, 3, run, run.stop_token_ids(TOKENIZER))


def reference(
    codec: LightLLMCodec, req: PreparedRequest, max_new_tokens: int, group_id: int
) -> SamplingParamsBase:
    """A fresh struct filled field by field, as LightLLM's master fills one."""
    params = codec.layout.new_sampling_params()
    fill(params, req.parameters.wire_values)
    if req.stop_token_ids:
        params.set_stop_sequences(req.stop_token_ids, req.parameters.stop_sequences)
    params.max_new_tokens = max_new_tokens
    params.min_new_tokens = min(req.parameters.min_new_tokens, max_new_tokens)
    params.group_request_id = group_id
    return params


@pytest.mark.parametrize("version", ["v1.1.0", "fc72ffa"])
def test_req_frames_are_those_of_a_struct_filled_field_by_field(version: str) -> None:
    codec = LightLLMCodec(version)
    filled = RequestParams(codec.layout.new_sampling_params, size=2)
    status = UpKVStatus(group_request_id=8, dp_index=1, pd_master_node_id=1)
    for round_ in range(3):  # filled, then found (and past the kept size: filled again)
        for n, params in enumerate(SETS):
            req = request(params, f"prompt {round_} {n}")
            group_id = 8 * (n + 1)
            frame = prefill_req(codec, filled, req, group_id, None, 1)
            expected = reference(codec, req, 1, group_id)
            assert frame == dumps((ObjType.REQ, (req.prompt, expected, MultimodalParams())))
            ids = [5, 6, 7, 8]
            frame = decode_req(codec, filled, req, group_id, ids, status)
            expected = reference(codec, req, params.max_new_tokens - 1, group_id)
            expected.suggested_dp_index = 1
            assert frame == dumps((ObjType.REQ, (ids, expected, MultimodalParams())))
            fresh = req_params(filled, req, 4, group_id)
            assert bytes(fresh) == bytes(reference(codec, req, 4, group_id))
            fresh.max_new_tokens = 99  # a copy: the kept struct is untouched
            assert req_params(filled, req, 4, group_id).max_new_tokens == 4
