"""OpenAI's Responses API: POST /v1/responses, streamed on the hot path or as one object.

Each response runs as one ``RequestRun`` like every endpoint (admission, retries before the
first token, deadlines, abort on disconnect, metrics labelled ``responses``). Nothing is
stored: a stateless master cannot continue a ``previous_response_id``.
"""

from __future__ import annotations

from functools import partial

import orjson
from fastapi import Request
from fastapi.responses import Response

from pdmaster.api.hot_path import Opened, SseEndpoint
from pdmaster.api.lightllm_routes import encode_prompt, off_loop, read_prompt_body
from pdmaster.api.openai_relay import Generation, error_body
from pdmaster.api.openai_routes import accepted_model_names, check_model
from pdmaster.api.responses_relay import ResponseEvents, ResponseState
from pdmaster.api.responses_schemas import ResponsesRequest
from pdmaster.api.service import ClientDisconnected, GenerateService
from pdmaster.api.text_request import output_room, parse_body, prepare_text, render, sampling
from pdmaster.dispatch.session import PreparedRequest
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import ChatTemplate
from pdmodel.tokenizer import ModelTokenizer

ENDPOINT = "responses"
NAMES = {
    "inputs": "input",
    "parameters.max_new_tokens": "max_output_tokens",
    "max_new_tokens": "max_output_tokens",
}


def responses_endpoint(
    service: GenerateService,
    tokenizer: ModelTokenizer,
    settings: MasterSettings,
    template: ChatTemplate,
    model_name: str,
) -> SseEndpoint:
    """POST /v1/responses: a stream on the hot path, or (``"stream": false``) one object."""
    model_names = accepted_model_names(settings)

    def prepare_response(raw: bytes) -> tuple[ResponsesRequest, PreparedRequest]:
        body = parse_body(raw, ResponsesRequest)
        check_model(body.model, model_names, model_name)
        body.check_supported()
        prompt = render(template, body.chat(), "input")
        prompt_ids = None
        limit = body.max_output_tokens
        if limit is None:
            prompt_ids = encode_prompt(prompt, tokenizer, settings, "input")
            limit = output_room(len(prompt_ids), settings, "input")
        params = sampling(limit, body.temperature, body.top_p, 0, [], template.add_special_tokens)
        return body, prepare_text(prompt, params, tokenizer, settings, NAMES, prompt_ids)

    async def open_response(request: Request) -> Opened:
        raw = await read_prompt_body(request, settings, "input")
        body, prepared = await off_loop(len(raw), partial(prepare_response, raw))
        state = ResponseState(model_name, body, Generation(prepared.prompt_tokens, []))
        run = service.run(ENDPOINT, prepared)
        if body.stream:
            return run, ResponseEvents(state)
        try:
            await run.run_to_end(request, state.gen.add)
        except ClientDisconnected:
            return Response(status_code=499)
        return Response(orjson.dumps(state.response()), media_type="application/json")

    return SseEndpoint(open_response, error_body)
