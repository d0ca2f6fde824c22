from __future__ import annotations

import pytest
from pydantic import ValidationError

from pdmaster.api.openai_schemas import ChatCompletionRequest, CompletionRequest
from pdmaster.errors import BadRequest


def test_null_fields_take_their_defaults() -> None:
    body = CompletionRequest.model_validate(
        {"prompt": "hi", "max_tokens": None, "temperature": None, "stop": None}
    )
    assert (body.max_tokens, body.temperature, body.stop) == (16, 1.0, [])


def test_temperature_zero_is_greedy_and_top_k_zero_is_off() -> None:
    body = CompletionRequest.model_validate(
        {"prompt": "hi", "temperature": 0, "top_k": 0, "stop": "x"}
    )
    params = body.generate_parameters(8, add_special_tokens=True)
    assert (params.do_sample, params.temperature, params.top_k) == (False, 1.0, -1)
    assert (params.max_new_tokens, params.stop_sequences) == (8, ["x"])


SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "stop",
    "logit_bias",
)


def test_sampling_fields_left_out_are_the_same_as_sent_at_openais_defaults() -> None:
    """Only the sampling fields a client sends go through LightLLM's checks again."""
    fields = CompletionRequest.model_fields
    defaults = {name: fields[name].get_default(call_default_factory=True) for name in SAMPLING}
    sent = CompletionRequest.model_validate({"prompt": "hi", **defaults})
    left_out = CompletionRequest.model_validate({"prompt": "hi", "seed": None})
    assert sent.model_fields_set >= set(SAMPLING) and not left_out.model_fields_set & {
        *SAMPLING,
        "seed",
    }
    params = [body.generate_parameters(8, add_special_tokens=False) for body in (sent, left_out)]
    assert params[0].model_dump() == params[1].model_dump()
    assert params[0].wire_values == params[1].wire_values


def test_sampling_fields_a_client_sends_are_checked_by_lightllms_bounds() -> None:
    for field, value in (("presence_penalty", -0.5), ("repetition_penalty", 0.5)):
        body = CompletionRequest.model_validate({"prompt": "hi", field: value})
        with pytest.raises(BadRequest, match=f"^{field}: "):
            body.generate_parameters(8, add_special_tokens=True)
    body = CompletionRequest.model_validate({"prompt": "hi", "top_p": 0.5, "seed": 3})
    params = body.generate_parameters(8, add_special_tokens=True)
    assert (params.top_p, params.seed, params.do_sample) == (0.5, 3, True)


@pytest.mark.parametrize(
    ("prompt", "text"),
    [("hi", "hi"), (["hi"], "hi")],
)
def test_prompt_text_accepts_one_string(prompt: object, text: str) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).prompt_text() == text


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([1, 2], "token-id"), ([[1, 2]], "token-id"), (["a", "b"], "one prompt"), (5, "must be")],
)
def test_prompt_text_refuses_other_prompts(prompt: object, message: str) -> None:
    body = CompletionRequest.model_validate({"prompt": prompt})
    with pytest.raises(BadRequest, match=f"^prompt: .*{message}"):
        body.prompt_text()


def test_chat_content_parts_are_joined_and_developer_is_system() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": t} for t in "ab"]},
                {"role": "assistant", "content": None},
                {"role": "tool", "content": "4", "tool_call_id": "c1", "name": None},
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
        }
    )
    assert [m.for_template() for m in body.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "4", "tool_call_id": "c1"},
    ]
    assert (body.output_limit, body.max_tokens_field) == (7, "max_completion_tokens")


def test_non_text_content_parts_are_refused_naming_the_part() -> None:
    with pytest.raises(ValidationError, match="part 0 is of type 'image_url'"):
        ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
        )


def test_n_above_one_is_a_400_naming_n() -> None:
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user"}], "n": 2})
    with pytest.raises(BadRequest, match="^n: "):
        body.check_supported()
