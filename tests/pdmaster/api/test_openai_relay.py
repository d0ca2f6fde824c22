from __future__ import annotations

import re
import time

import orjson
import pytest

from pdmaster.api.openai_relay import (
    ChatFormat,
    CompletionFormat,
    Generation,
    OpenAIStream,
    RandomHex,
    StopScanner,
    StreamEvents,
    error_body,
    sse,
)
from pdmaster.errors import BadRequest, NodeFailed, PayloadTooLarge
from pdwire.pd_io import TokenEntry
from pdwire.structs import FinishStatus


def entries(*texts: str, last_status: int = 0, start: int = 1) -> list[TokenEntry]:
    out: list[TokenEntry] = []
    for i, text in enumerate(texts):
        status = last_status if i == len(texts) - 1 else 0
        meta = {"count_output_tokens": start + i, "prompt_tokens": 4}
        out.append((7, text, meta, FinishStatus(status)))
    return out


def stream_of(gen: Generation, fmt: CompletionFormat) -> OpenAIStream:
    """The stream of ``fmt``'s id and time."""
    events = StreamEvents(fmt)
    return OpenAIStream(gen, events, events.lead(fmt.id, fmt.created))


def test_scanner_without_stops_passes_text_through() -> None:
    scanner = StopScanner([])
    assert [scanner.push(t) for t in ("a", "b")] == ["a", "b"] and not scanner.stopped


def test_scanner_holds_back_a_possible_stop_start_and_cuts_at_the_stop() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.push("go S") == "go "
    assert scanner.push("T") == ""
    assert scanner.push("OP and more") == ""
    assert scanner.stopped and scanner.push("x") == ""


def test_scanner_releases_held_text_that_did_not_become_a_stop() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.push("ST") == ""
    assert scanner.push("ART") == "START"
    assert scanner.push("ST") == "" and scanner.flush() == "ST"


def test_scanner_cuts_at_the_earliest_of_several_stops() -> None:
    scanner = StopScanner(["world", "lo w"])
    assert scanner.push("hello world") == "hel"


def test_scanner_holds_back_ends_that_begin_stops_of_regex_characters() -> None:
    scanner = StopScanner(["]^", "-\\n", "a.b"])
    assert scanner.push("x]") == "x"
    assert scanner.push("y-") == "]y"
    assert scanner.push("\\") == ""  # "-\\" may still become "-\\n"
    assert scanner.push("a") == "-\\"
    assert scanner.push(".") == ""
    assert scanner.push("c") == "a.c" and not scanner.stopped


def test_scanner_looks_back_only_as_far_as_the_longest_stop() -> None:
    scanner = StopScanner(["<end>", "ab"])
    assert scanner.push("a<en") == "a"  # "<en" may begin "<end>"
    assert scanner.push("d") == ""
    assert scanner.push("x a") == "<endx "
    assert scanner.push("b more") == "" and scanner.matched == "ab"


def test_generation_counts_tokens_and_leaves_the_stop_text_out() -> None:
    gen = Generation(prompt_tokens=3, stops=[" AI"])
    assert gen.add(entries("What", " is")) == "What is"
    assert not gen.done
    assert gen.add(entries(" AI", last_status=1, start=3)) == ""
    assert (gen.done, gen.finish_reason, gen.text) == (True, "stop", "What is")
    assert gen.usage() == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_generation_stops_at_a_stop_the_node_did_not_see() -> None:
    gen = Generation(prompt_tokens=4, stops=["s A"])
    assert gen.add(entries("What", " is", " AI", "?")) == "What i"
    assert (gen.done, gen.finish_reason, gen.completion_tokens) == (True, "stop", 3)


def test_generation_flushes_held_text_when_it_ends_by_length() -> None:
    gen = Generation(prompt_tokens=4, stops=["?!"])
    assert gen.add(entries("What", "?", last_status=2)) == "What?"
    assert gen.finish_reason == "length"


def test_completion_and_chat_chunks() -> None:
    fmt = CompletionFormat("m")
    chunk = fmt.chunk("hi", None)
    assert chunk["id"].startswith("cmpl-") and "usage" not in chunk
    assert chunk["choices"] == [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": None}]
    chat = ChatFormat("m", include_usage=True)
    (opening,) = chat.opening_chunks()
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = chat.chunk("", "stop")
    assert (last["object"], last["usage"], last["choices"][0]["delta"]) == (
        "chat.completion.chunk",
        None,
        {},
    )
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'


def test_error_body_names_the_field_of_a_4xx_only() -> None:
    assert error_body(BadRequest("n: only n=1"))["error"]["param"] == "n"
    assert error_body(PayloadTooLarge("request body is 5 bytes"))["error"]["param"] is None
    assert error_body(NodeFailed("node: gone"))["error"] == {
        "type": "node_failed",
        "code": "node_failed",
        "message": "node: gone",
        "param": None,
    }


def events(body: bytes) -> list[object]:
    parts = [p for p in body.split(b"\n\n") if p]
    assert all(p.startswith(b"data: ") for p in parts)
    return [p[6:].decode() if p == b"data: [DONE]" else orjson.loads(p[6:]) for p in parts]


def test_stream_chunks_are_the_formats_own_chunks() -> None:
    fmt = ChatFormat("m", include_usage=True)
    stream = stream_of(Generation(4, [], keep_text=False), fmt)
    opening, first = events(stream.chunk(entries('say "hi"\n')))
    assert opening == fmt.opening_chunks()[0]
    assert first == fmt.chunk('say "hi"\n', None)
    assert events(stream.chunk(entries("é", start=2))) == [fmt.chunk("é", None)]
    assert not stream.done
    last, usage, done = events(stream.chunk(entries("!", last_status=2, start=3)))
    assert last == fmt.chunk("!", "length")
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert (done, stream.done, stream.chunk(entries("x")), stream.close()) == (
        "[DONE]",
        True,
        b"",
        b"",
    )


def test_a_stream_that_meets_a_stop_string_ends_before_its_run() -> None:
    fmt = CompletionFormat("m")
    stream = stream_of(Generation(4, ["STOP"], keep_text=False), fmt)
    assert (
        stream.chunk(entries("go S")) == b"data: " + orjson.dumps(fmt.chunk("go ", None)) + b"\n\n"
    )
    assert stream.chunk(entries("T", start=2)) == b""  # held: it may begin the stop string
    last, done = events(stream.chunk(entries("OP", start=3)))
    assert (last, done, stream.done) == (fmt.chunk("", "stop"), "[DONE]", True)


def test_a_stream_that_fails_ends_with_an_error_event_and_done() -> None:
    stream = stream_of(Generation(4, []), CompletionFormat("m"))
    stream.chunk(entries("a"))
    error, done = events(stream.error(NodeFailed("node: gone")))
    assert (error["error"]["code"], done, stream.done) == ("node_failed", "[DONE]", True)


def test_a_stream_without_stop_strings_is_the_stream_whose_stops_never_match() -> None:
    steps = [
        entries("Hi", ' "you"', start=1),
        entries(),
        entries("\n", start=3),
        entries("é", "!", last_status=2, start=4),
    ]
    for fmt_type in (CompletionFormat, ChatFormat):
        for usage in (False, True):
            fmt = fmt_type("m", include_usage=usage)
            bodies = []
            for stops in ([], ["\x00never"]):
                stream = stream_of(Generation(4, stops, keep_text=False), fmt)
                bodies.append([stream.chunk(step) for step in steps] + [stream.close()])
            assert bodies[0] == bodies[1]
            assert bodies[0][-2].endswith(b"data: [DONE]\n\n")


def reference_stream(
    fmt: CompletionFormat, gen: Generation, steps: list[list[TokenEntry]]
) -> list[bytes]:
    """The stream's bodies as its format's chunks (dicts) word them, one ``sse`` each."""
    out, opening, done = [], b"".join(sse(c) for c in fmt.opening_chunks()), False

    def end(text: str) -> bytes:
        last = sse(fmt.chunk(text, gen.finish_reason))
        if fmt.include_usage:
            last += sse(fmt.usage_chunk(gen.usage()))
        return last + b"data: [DONE]\n\n"

    for step in steps:
        if done:
            out.append(b"")
            continue
        text = gen.add(step)
        body = end(text) if gen.done else sse(fmt.chunk(text, None)) if text else b""
        done = gen.done
        body, opening = opening + body, b""
        out.append(body)
    out.append(b"" if done else end(""))
    return out


STEPS = [
    [entries("Hi", ' "you"\n', "\\", start=1)],
    [entries(), entries("é\U0001f600", "\x00\x1f<>&'", start=4), entries("", start=6)],
    [entries("a", start=1), entries("b", last_status=1, start=2)],
    [entries("a", start=1), entries("b", "c", last_status=2, start=2), entries("d", start=4)],
    [entries("", last_status=2, start=1)],
    [entries("go S", start=1), entries("TO", start=2), entries("P and", start=3)],
    [entries("no stop ST", start=1), entries("ART", last_status=2, start=2)],
]


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("model", ["m", 'a "quoted"/model\\é', "\U0001f600"])
def test_stream_bytes_are_the_formats_chunks_byte_for_byte(
    steps: list[list[TokenEntry]], model: str
) -> None:
    for fmt_type in (CompletionFormat, ChatFormat):
        for usage in (False, True):
            for stops in ([], ["STOP"], ["ST", "\n"]):
                fmt = fmt_type(model, include_usage=usage)
                fmt.created = 2**40 + 7
                stream = stream_of(Generation(4, stops, False), fmt)
                got = [stream.chunk(step) for step in steps] + [stream.close()]
                want = reference_stream(fmt, Generation(4, stops, False), steps)
                assert got == want


def test_a_streams_lead_is_its_formats_for_its_id_and_time() -> None:
    events = StreamEvents(ChatFormat("m"))
    for created in (5, 6, 5, 2**40):
        fmt = ChatFormat("m")
        fmt.created = created
        lead = events.lead(fmt.id, created)
        assert sse(fmt.opening_chunks()[0]).startswith(lead)
    ids = RandomHex()
    before = int(time.time())
    leads = [orjson.loads(events.new_lead(ids)[6:-1] + b"}") for _ in range(100)]
    assert len({lead["id"] for lead in leads}) == 100
    for lead in leads:
        assert re.fullmatch("chatcmpl-[0-9a-f]{32}", lead["id"])
        assert before <= lead["created"] <= time.time()
        assert lead["object"] == "chat.completion.chunk"
