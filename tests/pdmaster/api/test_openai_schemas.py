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
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
        }
    )
    assert [m.for_template() for m in body.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
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
