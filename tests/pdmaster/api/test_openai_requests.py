"""OpenAI request bodies checked into prepared requests: a body whose fields (all but its
prompt) were seen before comes to what a fresh check of it comes to, errors included."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pdmaster.api.openai_routes import OpenAIRequests
from pdmaster.errors import ApiError
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import SimpleChatTemplate
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer

SETTINGS = MasterSettings(max_new_tokens=64, max_req_total_len=256)
TOKENIZER = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)


def requests() -> OpenAIRequests:
    return OpenAIRequests(TOKENIZER, SETTINGS, SimpleChatTemplate())


def outcome(requests: OpenAIRequests, kind: str, body: dict[str, Any]) -> object:
    """What a user would see of the request: the error, or all that the run is given."""
    try:
        checked, req = getattr(requests, kind)(orjson.dumps(body))
    except ApiError as exc:
        return type(exc), exc.status, exc.body()
    params = req.parameters
    return (
        checked.stream,
        checked.include_usage,
        req.prompt,
        req.prompt_tokens,
        req.stop_token_ids,
        req.view,
        (params.max_new_tokens, params.min_new_tokens, params.stop_sequences),
        params.wire_values,
    )


PROMPTS: list[Any] = [
    "has decode not and her also all",
    ["a list of one prompt"],
    "",
    "x" * 3000,  # over max_req_total_len tokens
    ["a", "b"],
    [1, 2, 3],
    5,
    {"text": "no"},
]

COMPLETIONS: list[dict[str, Any]] = [
    {"model": "model", "max_tokens": 2, "stream": True, "ignore_eos": True},
    {},
    {"max_tokens": None, "temperature": None, "stop": None},
    {"temperature": 0, "top_k": 0, "stop": "x", "stream": True},
    {"temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["a b", "c"], "max_tokens": 8},
    {"stream": True, "stream_options": {"include_usage": True}, "logit_bias": {"5": -100}},
    {"response_format": {"type": "json_object"}, "max_tokens": 1},
    {"max_tokens": 100},  # over the master's max_new_tokens
    {"max_tokens": 60},  # fits alone, not with a long prompt
    {"max_tokens": 0},
    {"presence_penalty": -0.5},
    {"repetition_penalty": 0.5},
    {"n": 2},
    {"echo": True},
    {"model": "another"},
    {"tools": []},
    {"stop": [""]},
    {"logit_bias": {"999999": -100}},
    {"seed": 2**64 - 1},  # past int64: refused
    {"user": "u" * 3000},  # fields too long to be kept
]


@pytest.mark.parametrize("fields", COMPLETIONS)
def test_a_completion_whose_fields_were_seen_before_comes_to_a_fresh_checks_outcome(
    fields: dict[str, Any],
) -> None:
    seen = requests()
    outcome(seen, "completion", {**fields, "prompt": "first"})
    for prompt in PROMPTS:
        body = {"prompt": prompt, **fields}
        assert outcome(seen, "completion", body) == outcome(requests(), "completion", body)
        assert outcome(seen, "completion", body) == outcome(seen, "completion", body)


def test_a_completion_without_a_prompt_is_refused_each_time() -> None:
    seen = requests()
    outcome(seen, "completion", {"prompt": "first", "max_tokens": 2})
    for body in ({"max_tokens": 2}, {"max_tokens": 2, "prompt": None}):
        refused = outcome(seen, "completion", body)
        assert refused == outcome(requests(), "completion", body)
        assert isinstance(refused, tuple) and refused[1] == 422


MESSAGES: list[Any] = [
    [{"role": "user", "content": "has decode not and her also all"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
    ],
    [],
    None,
    [{"role": "robot", "content": "hi"}],
    [{"role": "user", "content": [{"type": "image_url"}]}],
    [{"role": "user", "content": "y" * 3000}],
    "not a list",
]

CHATS: list[dict[str, Any]] = [
    {"model": "model", "max_tokens": 2, "stream": True},
    {},  # the output limit is what the context has left
    {"max_completion_tokens": 5, "max_tokens": 9, "stop": ["\n"]},
    {"stream": True, "stream_options": {"include_usage": True}, "temperature": 0},
    {"max_tokens": 100},
    {"max_completion_tokens": 100},
    {"logprobs": True},
    {"n": 3},
    {"model": "another"},
    {"functions": []},
]


@pytest.mark.parametrize("fields", CHATS)
def test_a_chat_whose_fields_were_seen_before_comes_to_a_fresh_checks_outcome(
    fields: dict[str, Any],
) -> None:
    seen = requests()
    outcome(seen, "chat", {**fields, "messages": [{"role": "user", "content": "first"}]})
    for messages in MESSAGES:
        body = {"messages": messages, **fields}
        assert outcome(seen, "chat", body) == outcome(requests(), "chat", body)
        assert outcome(seen, "chat", body) == outcome(seen, "chat", body)


def test_what_is_kept_of_a_body_holds_none_of_its_prompt() -> None:
    """Kept for the bodies that send its fields again, it must not keep a prompt alive."""
    seen = requests()
    long_prompt = "has decode not and her also all " * 10
    for _ in range(2):
        checked, _ = seen.completion(orjson.dumps({"prompt": long_prompt, "max_tokens": 2}))
        assert checked.body.model_dump(include={"prompt"}) == {"prompt": ""}
        messages = [{"role": "user", "content": long_prompt}]
        checked, _ = seen.chat(orjson.dumps({"messages": messages, "max_tokens": 2}))
        assert checked.body.model_dump(include={"messages"}) == {"messages": []}
