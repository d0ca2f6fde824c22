"""The compiled writer of an OpenAI stream's text chunks (``pdwire._sse.text_chunk``, which the
compiled relay, ``pdmaster/_lane.c``, writes a stream's plain steps with) against
``OpenAIStream.chunk``, its reference: the same bytes and the same token counts after the
step, or None (and then the reference's own answer, whatever it is: its bytes or its error).
"""

from __future__ import annotations

import random
from itertools import product
from typing import Any

import pytest

from pdmaster.api.openai_relay import (
    ChatFormat,
    CompletionFormat,
    Generation,
    OpenAIStream,
    RandomHex,
    StreamEvents,
)
from pdwire.pd_io import TokenEntry
from pdwire.sse import CompiledTextChunk, compiled_text_chunk, python_http_chunk
from pdwire.structs import FinishStatus
from tests.pdwire.leaks import assert_keeps_nothing
from tests.pdwire.test_sse_ext import ODD_STRS, odd_status, odd_text, odd_value

IDS = RandomHex()
SHAPES = list(product((CompletionFormat, ChatFormat), (False, True)))


@pytest.fixture(scope="module")
def writer() -> CompiledTextChunk:
    text_chunk = compiled_text_chunk()
    if text_chunk is None:
        pytest.fail("pdwire._sse is not built (python setup.py build_ext --inplace)")
    return text_chunk


@pytest.fixture(scope="module")
def events(writer: CompiledTextChunk) -> dict[Any, StreamEvents]:
    return {
        (kind, usage): StreamEvents(kind('m\u00e9"odel', usage), writer) for kind, usage in SHAPES
    }


def stream_at(events: StreamEvents, count: Any, prompt: Any) -> OpenAIStream:
    """A stream past its first step (the chat's role chunk out), its counts at these."""
    stream = OpenAIStream(Generation(prompt, [], False), events, events.new_lead(IDS))
    stream.chunk([])
    parts = stream.lane_parts()
    assert parts is not None
    parts[1].completion_tokens = count
    return stream


def same_as_python(
    events: StreamEvents, entries: Any, count: Any = 0, prompt: Any = 7, framed: bool = False
) -> bytes | None:
    """The compiled writer's body, checked against the reference's; None where it declined."""
    stream = stream_at(events, count, prompt)
    parts = stream.lane_parts()
    assert parts is not None
    text_chunk, gen, head, tail = parts
    got = text_chunk(entries, count, prompt, head, tail, FinishStatus, framed)
    assert not isinstance(got, BaseException)
    try:
        expected = stream.chunk(entries)
    except Exception:  # the reference's error: the compiled writer left the step to it
        assert got is None, (entries, got)
        return None
    if got is None:
        return None
    assert not stream.done, entries  # a step that ends the stream is the reference's alone
    body, got_count, got_prompt = got
    assert body == (python_http_chunk(expected) if framed and expected else expected), entries
    assert type(got_count) is type(gen.completion_tokens)
    assert type(got_prompt) is type(gen.prompt_tokens)
    assert (got_count, got_prompt) == (gen.completion_tokens, gen.prompt_tokens), entries
    return body


def plain_text(rng: random.Random) -> str:
    """Any text a node's detokenizer gives: every code point but the surrogates."""
    pick = [
        lambda: rng.randint(0, 0x7F),
        lambda: rng.randint(0x80, 0x7FF),
        lambda: rng.randint(0x800, 0xD7FF),
        lambda: rng.randint(0xE000, 0xFFFF),
        lambda: rng.randint(0x10000, 0x10FFFF),
    ]
    return "".join(chr(rng.choice(pick)()) for _ in range(rng.randint(0, 6)))


def test_the_install_built_it() -> None:
    assert compiled_text_chunk() is not None


def test_plain_steps_are_all_written_here(events: dict[Any, StreamEvents]) -> None:
    """What nodes send, on every format: one entry or several, counts in the metadata or
    not, texts empty, escaped, non-ASCII; framed or not."""
    rng = random.Random(11)
    for i in range(3000):
        entries: list[TokenEntry] = []
        for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
            meta: dict[str, Any] = {"id": rng.randint(0, 2**40), "logprob": -0.5}
            if rng.random() < 0.9:
                meta["count_output_tokens"] = rng.randint(1, 4096)
            if rng.random() < 0.7:
                meta["prompt_tokens"] = rng.randint(1, 2**20)
            entries.append((rng.randint(0, 2**40), plain_text(rng), meta, FinishStatus(0)))
        shape = events[SHAPES[i % len(SHAPES)]]
        count = rng.choice([0, 5, 2**62])
        assert same_as_python(shape, entries, count, framed=rng.random() < 0.5) is not None


def test_every_character_below_0x800(events: dict[Any, StreamEvents]) -> None:
    """Each escape orjson writes (and each character it writes as it is), one at a time and all
    in one text."""
    shape = events[CompletionFormat, False]
    texts = [chr(c) for c in range(0x800)] + ["".join(chr(c) for c in range(0x800))]
    for text in texts:
        entry: TokenEntry = (0, text, {"count_output_tokens": 1}, FinishStatus(0))
        assert same_as_python(shape, [entry]) is not None, repr(text)


def test_fuzzed_steps_are_written_as_python_writes_them(
    events: dict[Any, StreamEvents],
) -> None:
    """Odd texts (surrogates, subclasses, not str), metadata (any value, subclasses, not a
    dict), statuses (ending ones, other classes), entries (not 4-tuples) and counts before the
    step (not an int): the same bytes and counts, or None and the reference's own answer."""
    rng = random.Random(23)
    written = declined = 0
    for i in range(6000):
        entries: Any = []
        for _ in range(rng.randint(0, 4)):
            meta: Any = {}
            for key in ("count_output_tokens", "prompt_tokens"):
                if rng.random() < 0.7:
                    meta[key] = rng.randint(0, 99) if rng.random() < 0.6 else odd_value(rng)
            meta[7] = [1]
            if rng.random() < 0.02:
                meta = [("count_output_tokens", 1)]
            status = FinishStatus(0) if rng.random() < 0.8 else odd_status(rng)
            entries.append((1, odd_text(rng), meta, status))
        if rng.random() < 0.03:
            entries = tuple(entries)
        elif rng.random() < 0.03 and entries:
            entries[0] = entries[0][:3]
        count = rng.randint(0, 9) if rng.random() < 0.85 else odd_value(rng)
        prompt = rng.randint(0, 9) if rng.random() < 0.85 else odd_value(rng)
        shape = events[SHAPES[i % len(SHAPES)]]
        if same_as_python(shape, entries, count, prompt) is None:
            declined += 1
        else:
            written += 1
    assert written > 1500 and declined > 1000  # both sides of the line were tried


def test_a_decline_leaves_no_trace(writer: CompiledTextChunk) -> None:
    """A decline after entries were taken: None, no exception set, the inputs as they were."""
    good: TokenEntry = (0, "a", {"count_output_tokens": 3}, FinishStatus(0))
    lone: TokenEntry = (0, "\ud800", {"count_output_tokens": 4}, FinishStatus(0))
    ends: TokenEntry = (0, "b", {"count_output_tokens": 5}, FinishStatus(2))
    for bad in (lone, ends):
        entries = [good, good, bad]
        assert writer(entries, 1, 2, b"<", b">", FinishStatus, False) is None
        assert entries == [good, good, bad]
    assert writer([good], 1, 2, b"<", b">", FinishStatus, False) == (b'<"a">', 3, 2)
    assert writer([good], 1, 2, b"<", b">", FinishStatus, True) == (b'5\r\n<"a">\r\n', 3, 2)
    assert writer([], 1, 2, b"<", b">", FinishStatus, True) == (b"", 1, 2)


def test_statuses_are_the_callers_to_check_without_a_status_type(
    writer: CompiledTextChunk,
) -> None:
    """The compiled relay checks every status itself (its plain case) and passes None."""
    entry: TokenEntry = (0, "a", {}, FinishStatus(2))
    assert writer([entry], 1, 2, b"", b"", None, False) == (b'"a"', 2, 2)
    assert writer([entry], 1, 2, b"", b"", FinishStatus, False) is None


def test_bad_arguments_are_a_type_error(writer: CompiledTextChunk) -> None:
    with pytest.raises(TypeError):
        writer([], 0, 0, "not bytes", b"", None, False)
    with pytest.raises(TypeError):
        writer([], 0, 0, b"", b"", "not a type", False)
    with pytest.raises(TypeError):
        writer([], 0, 0, b"", b"")


def test_a_stream_with_stop_strings_or_no_writer_has_no_lane_parts(
    events: dict[Any, StreamEvents],
) -> None:
    """Stop strings hold text back: every chunk is the reference's."""
    shape = events[CompletionFormat, False]
    stream = OpenAIStream(Generation(3, ["x"], False), shape, shape.new_lead(IDS))
    assert stream.lane_parts() is None
    bare = StreamEvents(CompletionFormat("m", False))
    assert OpenAIStream(Generation(3, [], False), bare, bare.new_lead(IDS)).lane_parts() is None


def test_no_leaks(writer: CompiledTextChunk) -> None:
    """Every path (written, declined, error) many times over: the inputs' refcounts come back,
    and neither Python's allocator nor the process grows."""
    rng = random.Random(3)
    calls: list[tuple[Any, ...]] = []
    for i in range(60):
        meta = {"count_output_tokens": odd_value(rng), "prompt_tokens": odd_value(rng)}
        if i % 3 == 0:
            meta = {"count_output_tokens": 10**30, "prompt_tokens": 2**70}
        entries = [(8, rng.choice(ODD_STRS) * 40, dict(meta), FinishStatus(i % 4 // 3 * 2))]
        entries += [(9, odd_text(rng), {}, odd_status(rng))] if i % 5 == 0 else []
        count = 10**20 + i if i % 7 else "not an int"
        calls.append((entries, count, 2**65, b"<head>" * 30, b"<tail>", FinishStatus, i % 2))
    calls.append(([(8, "x" * 5000, {}, FinishStatus(0))], 1, 2, b"h", b"t", None, True))

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for args in calls:
                try:
                    writer(*args)
                except Exception:  # errors are one of the paths tried
                    pass

    watched = [
        v
        for entries, *rest in calls
        for e in entries
        for v in (e, e[1], e[2], *e[2].values(), *rest[:4])
        if type(v) is not bool and v is not None and not (type(v) is int and abs(v) <= 256)
    ]
    assert_keeps_nothing(run, watched, 50, 2000)
