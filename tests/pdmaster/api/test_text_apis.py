"""Anthropic's and the Responses API's request mapping and stream encoders, without processes."""

from __future__ import annotations

import json

import pytest

from pdmaster.api.anthropic_relay import MessageEvents, error_body
from pdmaster.api.anthropic_schemas import MessagesRequest
from pdmaster.api.info_routes import server_info
from pdmaster.api.openai_relay import Generation
from pdmaster.api.responses_relay import ResponseEvents, ResponseState
from pdmaster.api.responses_schemas import ResponsesRequest
from pdmaster.api.text_request import render
from pdmaster.errors import BadRequest, DeadlineExceeded, NodeFailed, Overloaded
from pdmaster.settings import MasterSettings
from pdmodel.chat_template import SimpleChatTemplate
from tests.pdmaster.api.test_openai_relay import entries


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            out.append((name[len("event: ") :], json.loads(data[len("data: ") :])))
    return out


def test_messages_map_system_and_text_blocks_and_continue_an_assistant_turn() -> None:
    body = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "x"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "Sure:"},
            ],
        }
    )
    prompt = render(SimpleChatTemplate(), body.chat(), "messages")
    assert prompt == "<|system|>\nBe brief.\n<|user|>\na\nb\n<|assistant|>\nSure:"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [{"name": "t"}]}, "tools"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format"),
    ],
)
def test_messages_refuse_what_nodes_cannot_do(extra: dict, field: str) -> None:
    body = MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    )
    with pytest.raises(BadRequest, match=f"^{field}: "):
        body.check_supported()


def test_anthropic_error_types_follow_the_status() -> None:
    assert error_body(Overloaded("busy", retry_after_s=1))["error"]["type"] == "overloaded_error"
    assert error_body(NodeFailed("gone"))["error"]["type"] == "api_error"
    assert error_body(DeadlineExceeded("late"))["error"]["type"] == "timeout_error"
    assert error_body(BadRequest("x: y")) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "x: y"},
    }


def test_message_events_hold_a_stop_back_and_name_it() -> None:
    gen = Generation(4, ["STOP"])
    enc = MessageEvents("m", gen)
    head = events(enc.chunk(entries("Hi ")))
    assert [name for name, _ in head] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
    ]
    assert head[0][1]["message"]["usage"] == {"input_tokens": 4, "output_tokens": 0}
    assert enc.chunk(entries("ST", start=2)) == b""  # may begin the stop string
    assert events(enc.chunk(entries("OP!", start=3))) == []
    assert enc.done and enc.chunk(entries("more", start=4)) == b""  # the run is ended
    tail = events(enc.close())
    assert [name for name, _ in tail] == ["content_block_stop", "message_delta", "message_stop"]
    assert tail[1][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}
    assert tail[1][1]["usage"] == {"output_tokens": 3}
    assert events(enc.error(NodeFailed("gone")))[0][0] == "error"


def test_responses_map_items_and_refuse_state_and_tools() -> None:
    body = ResponsesRequest.model_validate(
        {
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Sys"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hi"}],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "Yo"}]},
            ],
            "store": True,
            "previous_response_id": None,
        }
    )
    body.check_supported()
    assert body.chat() == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
    ]
    for extra, field in (
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"truncation": "auto"}, "truncation"),
    ):
        with pytest.raises(BadRequest, match=f"^{field}: "):
            ResponsesRequest.model_validate({"input": "x", **extra}).check_supported()


def test_response_events_are_numbered_and_end_incomplete_at_the_limit() -> None:
    body = ResponsesRequest.model_validate({"input": "x", "max_output_tokens": 2})
    state = ResponseState("m", body, Generation(4, []))
    enc = ResponseEvents(state)
    raw = enc.chunk(entries("a")) + enc.chunk(entries("b", last_status=2, start=2))
    out = events(raw + enc.close())
    assert [d["sequence_number"] for _, d in out] == list(range(len(out)))
    assert [name for name, _ in out][-1] == "response.incomplete"
    final = out[-1][1]["response"]
    assert (final["status"], final["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert final["output"][0]["content"][0]["text"] == "ab"
    assert final["usage"]["output_tokens"] == 2 and out[0][1]["response"]["usage"] is None
    failed = events(enc.error(NodeFailed("gone")))[0]
    assert failed[0] == "response.failed" and failed[1]["response"]["error"]["message"] == "gone"


def test_server_info_leaves_out_every_secret() -> None:
    settings = MasterSettings(admin_token="a-secret", register_token="r-secret")
    info = server_info(settings, "pd-sim")
    assert "a-secret" not in json.dumps(info) and "r-secret" not in json.dumps(info)
    assert (info["model_name"], info["max_req_total_len"]) == ("pd-sim", 24576)
    assert info["dispatch"]["kv_move_timeout_s"] == 10.0 and isinstance(info["model_dir"], str)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"system": 7}, "system: must be a string or a list of content blocks"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content: must be a string"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages.0.content.0: must be a"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "id": 1}]}]},
            "messages.0.content.0.id: not supported",
        ),
    ],
)
def test_message_content_errors_name_the_part(body: dict, message: str) -> None:
    request = MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **body}
    )
    with pytest.raises(BadRequest) as refused:
        request.chat()
    assert refused.value.message.startswith(message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "input: must be a string or a list of items"),
        ([5], "input.0: must be an item object"),
        ([{"role": "robot", "content": "x"}], "input.0.role: must be one of"),
        ([{"role": "user", "content": 5}], "input.0.content: must be a string or a list"),
        ([], "input: no messages"),
    ],
)
def test_response_input_errors_name_the_item(value: object, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        ResponsesRequest.model_validate({"input": value}).chat()
    assert refused.value.message.startswith(message)
