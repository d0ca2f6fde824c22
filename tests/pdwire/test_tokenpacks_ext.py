"""The compiled TOKEN_PACKS decoder: built by the install, taken for every token-pack frame
LightLLM and we send, and never accepting what safepickle refuses or building anything else.
"""

from __future__ import annotations

import functools
import gc
import pickletools
import random
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

from pdwire.errors import WireError
from pdwire.fastdecode import TokenPacksDecoder, extension
from pdwire.lightllm import LightLLMCodec
from pdwire.message_sets import MESSAGE_SETS
from pdwire.pd_io import TOKEN_KEYS, ObjType
from pdwire.safepickle import Limits
from pdwire.structs import FinishStatus, lightllm_name
from tests.pdwire.leaks import assert_keeps_nothing

VERSIONS = sorted(MESSAGE_SETS)


def fast_decoder(version: str) -> TokenPacksDecoder:
    """What a codec builds, for a test that needs to see whether the fast path decided."""
    codec = LightLLMCodec(version)
    statuses = MESSAGE_SETS[version].finish_statuses

    def new_status(raw: bytes) -> FinishStatus:
        status = FinishStatus.from_buffer_copy(raw)
        if status.status not in statuses:
            raise ValueError(status.status)
        return status

    return TokenPacksDecoder(
        lightllm_name(ObjType),
        ObjType.TOKEN_PACKS,
        codec.messages.tuple_lengths[ObjType.TOKEN_PACKS],
        lightllm_name(FinishStatus),
        {},
        new_status,
        Limits(),
    )


def plain(msg: Any) -> Any:
    """A decoded message with each FinishStatus as its value, to compare two decoders."""
    if isinstance(msg, FinishStatus):
        return ("FinishStatus", msg.status)
    if isinstance(msg, tuple | list):
        return type(msg)(plain(m) for m in msg)
    if isinstance(msg, dict):
        return {k: plain(v) for k, v in msg.items()}
    return msg


def short_text(rng: random.Random) -> str:
    """ASCII of the lengths the decoder's string cache keeps (and one past), from a small
    alphabet: the same strings again across frames, and different ones in one cache slot."""
    return "".join(rng.choice("ab \n") for _ in range(rng.randint(0, 41)))


def random_frame(codec: LightLLMCodec, rng: random.Random) -> bytes:
    statuses = sorted(codec.messages.finish_statuses)
    entries = []
    for _ in range(rng.randint(0, 12)):
        meta: dict[Any, Any] = {
            "id": rng.choice([rng.randint(0, 200), rng.randint(-(2**70), 2**70)]),
            "logprob": rng.uniform(-5, 0),
            "special": rng.random() < 0.5,
            "text": rng.choice(["", "é" * rng.randint(0, 300), "\U0001f600", short_text(rng)]),
            "n": None,
            7: [1, 2.5, "x", [], {}],
            short_text(rng): rng.choice([{}, [], {"k": []}, [{}], short_text(rng)]),
        }
        if rng.random() < 0.5:
            meta["logprobs"] = {rng.randint(0, 70000): {"logprob": -1.0, "rank": 1}}
        entries.append(
            (
                rng.randint(0, 2**40),
                rng.choice(["", " a", "b" * 300, short_text(rng)]),
                meta if rng.random() < 0.9 else {},
                FinishStatus(rng.choice(statuses)),
            )
        )
    load = rng.choice([{"total_token_usage_rate": 0.5, "x": {"y": [1]}}, {}])
    return codec.encode_token_packs(entries, load)


def test_the_install_built_it() -> None:
    """CI installs with ``pip install -e .``: the master must not fall back to Python."""
    assert extension() is not None
    assert all(LightLLMCodec(v).token_packs_accelerated for v in VERSIONS)
    assert not LightLLMCodec(accelerated=False).token_packs_accelerated


@pytest.mark.parametrize("version", VERSIONS)
def test_lightllms_own_token_packs_take_the_fast_path(golden_root: Path, version: str) -> None:
    fast = fast_decoder(version)
    safe = LightLLMCodec(version, accelerated=False)
    frames = sorted((golden_root / version).glob("token_packs*.pkl"))
    assert frames
    for path in frames:
        raw = path.read_bytes()
        got = fast.decode(raw)
        assert got is not None, path.name
        kind, entries, load = safe.decode_node_message(raw)
        assert plain(got) == plain((kind, entries, load))


@pytest.mark.parametrize("version", VERSIONS)
def test_random_frames_decode_as_safepickle_decodes_them(version: str) -> None:
    rng = random.Random(17)
    codec = LightLLMCodec(version)
    fast = fast_decoder(version)
    for _ in range(200):
        raw = random_frame(codec, rng)
        got = fast.decode(raw)
        assert got is not None
        assert plain(got) == plain(
            LightLLMCodec(version, accelerated=False).decode_node_message(raw)
        )
        assert plain(codec.decode_node_message(raw)) == plain(got)


def _mutations(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(2, len(data))
        action = rng.random()
        if action < 0.5:
            data[pos] = rng.randrange(256)
        elif action < 0.7:
            del data[pos]
        elif action < 0.85:
            data.insert(pos, rng.randrange(256))
        else:  # an opcode the frame uses elsewhere
            data[pos] = rng.choice(b"}](utse\x85\x86\x87\x93R\x94hj.K\x8c")
    return bytes(data)


@pytest.mark.parametrize("version", VERSIONS)
def test_mutated_frames_are_never_accepted_beyond_safepickle(version: str) -> None:
    """Fuzzed bytes: where the fast path decodes a frame, safepickle decodes the same values;
    where safepickle refuses it, the fast path returned None (and never crashed)."""
    rng = random.Random(31)
    codec = LightLLMCodec(version)
    safe = LightLLMCodec(version, accelerated=False)
    fast = fast_decoder(version)
    seeds = [random_frame(codec, rng) for _ in range(20)]
    accepted = 0
    for i in range(3000):
        raw = _mutations(seeds[i % len(seeds)], rng)
        got = fast.decode(raw)
        if got is None:
            continue
        accepted += 1
        try:
            reference = safe.decode_node_message(raw)
        except WireError as exc:
            pytest.fail(f"fast path accepted what safepickle refuses ({exc}): {raw!r}")
        assert plain(got) == plain(reference), raw
    assert accepted > 0  # some mutations (a changed digit) stay valid frames


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("a memo reference to a dict", lambda body: body.replace(b"M\x2c\x01", b"h\x07", 1)),
        ("a tuple key", lambda body: body.replace(b"M\x2c\x01", b"K\x01K\x01\x86N", 1)),
        ("BUILD", lambda body: body.replace(b"M\x2c\x01", b"N}b", 1)),
        ("another global", lambda body: body.replace(b"_unpickle", b"_unpickl3", 1)),
        ("an open MARK", lambda body: body[:-1] + b"(."),
        ("trailing bytes", lambda body: body + b"N"),
    ],
)
def test_shapes_outside_token_packs_are_left_to_safepickle(what: str, edit: Any) -> None:
    codec = LightLLMCodec("v1.1.0")
    entries = [(8, "a", {"k": 1}, FinishStatus(0)), (16, "b", {"k": 300}, FinishStatus(0))]
    raw = codec.encode_token_packs(entries, {})
    assert fast_decoder("v1.1.0").decode(raw) is not None
    tampered = edit(raw)
    assert tampered != raw, what
    assert fast_decoder("v1.1.0").decode(tampered) is None, what


def test_nesting_and_size_caps() -> None:
    codec = LightLLMCodec("v1.1.0")
    fast = fast_decoder("v1.1.0")
    deep: dict[str, Any] = {"a": {"b": {"c": 1}}}
    assert fast.decode(codec.encode_token_packs([(8, "", deep, FinishStatus(0))], {})) is not None
    deeper: dict[str, Any] = {"a": {"b": {"c": {"d": 1}}}}
    raw = codec.encode_token_packs([(8, "", deeper, FinishStatus(0))], {})
    assert fast.decode(raw) is None
    with pytest.raises(WireError):
        codec.decode_node_message(raw)  # nor does safepickle's entry check take it
    big = codec.encode_token_packs([(8, "x" * 300_000, {}, FinishStatus(0))], {})
    assert fast.decode(big) is None  # over 256 KiB: safepickle, with its own limits
    assert codec.decode_node_message(big)[1][0][1] == "x" * 300_000
    wide = {str(i): i for i in range(1025)}
    raw = codec.encode_token_packs([(8, "", wide, FinishStatus(0))], {})
    assert fast.decode(raw) is None


def test_unknown_status_and_obj_type_are_left_to_safepickle() -> None:
    codec = LightLLMCodec("v1.1.0")
    fast = fast_decoder("v1.1.0")
    raw = codec.encode_token_packs([(8, "a", {}, FinishStatus(0))], {})
    ops = [(op.name, pos) for op, _, pos in pickletools.genops(raw)]
    status_at = next(pos for name, pos in ops if name == "SHORT_BINBYTES")
    bad_status = raw[: status_at + 2] + b"\x63\x00\x00\x00" + raw[status_at + 6 :]
    assert fast.decode(bad_status) is None
    with pytest.raises(WireError):
        codec.decode_node_message(bad_status)
    kind_at = next(pos for name, pos in ops if name == "BININT1")
    bad_kind = raw[: kind_at + 1] + b"\x63" + raw[kind_at + 2 :]
    assert fast.decode(bad_kind) is None
    with pytest.raises(WireError):
        codec.decode_node_message(bad_kind)


def test_a_codecs_own_limits_bound_the_fast_path_too() -> None:
    """Limits below the defaults: what safepickle refuses under them is never taken by the
    compiled path either (it returns None, and safepickle refuses)."""
    wide = {str(i): i for i in range(20)}
    big_id = 2**100  # a 14-byte LONG1
    frames = {
        "max_dict_items": ([(8, "", wide, FinishStatus(0))], Limits(max_dict_items=10)),
        "max_int_bytes": ([(8, "", {"id": big_id}, FinishStatus(0))], Limits(max_int_bytes=8)),
        "max_memo": (
            [(8 * i, "t", {"k": i}, FinishStatus(0)) for i in range(50)],
            Limits(max_memo=100),
        ),
    }
    for what, (entries, limits) in frames.items():
        raw = LightLLMCodec().encode_token_packs(entries, {})
        assert fast_decoder("v1.1.0").decode(raw) is not None, what
        strict = LightLLMCodec(limits=limits)
        assert strict.token_packs_accelerated
        assert strict._token_packs.decode(raw) is None, what
        with pytest.raises(WireError):
            strict.decode_node_message(raw)
    shallow = LightLLMCodec(limits=Limits(max_depth=5))
    assert not shallow.token_packs_accelerated  # safepickle refuses every token pack then


@pytest.mark.parametrize("version", VERSIONS)
def test_only_this_versions_token_packs(version: str) -> None:
    """Another message, or a token pack of a length the version does not send, is left to
    safepickle (which refuses the latter, naming the lengths)."""
    entries = [(8, "a", {"k": 1}, FinishStatus(0))]
    codec = LightLLMCodec(version)
    fast = fast_decoder(version)
    carry = codec.token_packs_carry_load
    other = next(v for v in VERSIONS if MESSAGE_SETS[v].token_packs_carry_load != carry)
    raw = LightLLMCodec(other).encode_token_packs(entries, {"total_token_usage_rate": 0.5})
    assert fast.decode(raw) is None
    with pytest.raises(WireError, match="TOKEN_PACKS frame of"):
        codec.decode_node_message(raw)
    abort = codec._dumps((ObjType.ABORT, entries))
    assert fast.decode(abort) is None
    assert fast.decode(codec.encode_abort(8)) is None
    assert codec.decode_node_message(codec.encode_abort(8)) == (ObjType.ABORT, 8, None)


def test_statuses_shared_only_where_the_codec_shares_them() -> None:
    entries = [(8 * i, "a", {"k": i}, FinishStatus(i % 2)) for i in range(6)]
    raw = LightLLMCodec().encode_token_packs(entries, {})
    for share in (True, False):
        codec = LightLLMCodec(share_statuses=share)
        for _ in range(2):  # the second frame finds the shared ones in the codec's map
            _, got, _ = codec.decode_node_message(raw)
            assert [e[3].status for e in got] == [i % 2 for i in range(6)]
            assert len({id(e[3]) for e in got}) == (2 if share else 6)


def test_strings_are_their_own_values_across_frames() -> None:
    """The cached strings: the same text in many frames, texts that share a cache slot, and
    a key used once as a text: each decodes to its own value every time."""
    codec = LightLLMCodec()
    texts = [f"t{i}" for i in range(600)] + ["x" * 40, "x" * 41, "id"]
    for _ in range(3):
        for start in range(0, len(texts), 50):
            chunk = texts[start : start + 50]
            entries = [(8 * i, t, {t: i, "id": t}, FinishStatus(0)) for i, t in enumerate(chunk)]
            _, got, _ = codec.decode_node_message(codec.encode_token_packs(entries, {}))
            want = [(t, {t: i, "id": t}) for i, t in enumerate(chunk)]
            assert [(e[1], e[2]) for e in got] == want
            assert all(type(e[1]) is str for e in got)


def test_keys_readers_look_up_are_given_as_the_interned_strings() -> None:
    """A metadata key the master reads comes out as the interned str (the object a literal
    "id" is), so dict lookups match it by identity; other frames' strings do not displace it."""
    codec = LightLLMCodec()
    noise = [f"k{i}" for i in range(2000)]
    entries = [
        (8 * i, t, {t: i, **dict.fromkeys(TOKEN_KEYS, 1)}, FinishStatus(0))
        for i, t in enumerate(noise)
    ]
    codec.decode_node_message(codec.encode_token_packs(entries, {}))
    entry = (8, " a", dict.fromkeys(TOKEN_KEYS, 1), FinishStatus(0))
    frame = codec.encode_token_packs([entry], {"client_ip_port": "h:1"})
    _, got, load = codec.decode_node_message(frame)
    assert got[0][2] == entry[2]
    for key in [*got[0][2], *load]:
        assert key is sys.intern(key), key
    assert {"id", "logprob", "special", "count_output_tokens", "prompt_tokens"} <= set(TOKEN_KEYS)


def test_no_leaks() -> None:
    """Decoded, declined and failing frames many times over: the inputs' refcounts come back,
    Python's allocator and the process do not grow, and a dropped codec is collected."""
    rng = random.Random(5)
    codec = LightLLMCodec(share_statuses=True)
    seeds = [random_frame(codec, rng) for _ in range(10)]
    frames = seeds + [_mutations(seeds[i % 10], rng) for i in range(60)]
    unknown = codec.encode_token_packs([(8, "a", {}, FinishStatus(0))], {})
    frames.append(unknown.replace(b"C\x04\x00\x00\x00\x00", b"C\x04\x63\x00\x00\x00"))
    shape = [
        (8 * i, "t", {"id": 300 + i, "lp": -0.5, "n": None}, FinishStatus(0)) for i in range(5)
    ]
    frames.append(codec.encode_token_packs(shape, {}))  # dicts copied from the first

    def run(fast: Any, rounds: int) -> None:
        for _ in range(rounds):
            for raw in frames:
                fast(raw)

    run(codec._token_packs.decode, 20)  # the statuses it memoises are made in the warm-up
    watched = [codec._statuses, *codec._statuses.values(), ObjType.TOKEN_PACKS]
    assert_keeps_nothing(functools.partial(run, codec._token_packs.decode), watched, 20, 300)
    gone = weakref.ref(codec)
    del codec, watched
    gc.collect()
    assert gone() is None  # its decoder holds a method of it: a cycle the collector breaks


def _frame_of(metas: list[bytes]) -> bytes:
    """A v1.1.0 token pack whose entries' metadata are the given opcodes (each leaving one
    dict), as a hostile or unusual pickler could write them."""

    def text(s: str) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s.encode()

    status = (
        text("_ctypes") + text("_unpickle") + b"\x93"
        + text("lightllm.server.core.objs.req") + text("FinishStatus") + b"\x93"
        + b"}C\x04\x00\x00\x00\x00\x86\x86R"
    )  # fmt: skip
    entries = b"".join(
        b"(K" + bytes([8 * i]) + text("t") + meta + status + b"t" for i, meta in enumerate(metas)
    )
    head = b"\x80\x04" + text("lightllm.server.pd_io_struct") + text("ObjType") + b"\x93K\x03\x85R"
    return head + b"](" + entries + b"e}\x87."


def test_dicts_of_one_shape_each_have_their_own_items() -> None:
    """Metadata dicts with the keys of one before them (built as a copy of it): the values
    each one was given, also where a key repeats or the earlier dict grew after."""

    def pairs(*items: tuple[str, bytes]) -> bytes:
        return b"".join(b"\x8c" + bytes([len(k)]) + k.encode() + v for k, v in items)

    def d(*items: tuple[str, bytes]) -> bytes:
        return b"}(" + pairs(*items) + b"u"

    ab = d(("a", b"K\x01"), ("b", b"N"))
    cases = [
        [ab, ab, d(("a", b"K\x02"), ("b", b"N"))],
        [ab + pairs(("c", b"K\x03")) + b"s", ab],  # the first grew after (SETITEM)
        [ab[:-1] + b"u(" + pairs(("b", b"K\x05")) + b"u", ab],  # ... or took a second batch
        [d(("a", b"K\x01"), ("a", b"K\x02")), d(("a", b"K\x03"), ("a", b"K\x02"))],  # a key twice
        [d(("a", b"}"), ("b", b"]")), d(("a", b"}"), ("b", b"]"))],  # containers: fresh each
        [ab, d(("b", b"N"), ("a", b"K\x01")), ab],  # the keys in another order
    ]  # fmt: skip
    safe = LightLLMCodec(accelerated=False)
    fast = fast_decoder("v1.1.0")
    for metas in cases:
        raw = _frame_of(metas)
        got = fast.decode(raw)
        assert got is not None, metas
        want = safe.decode_node_message(raw)
        assert plain(got) == plain(want), metas
        assert [list(e[2]) for e in got[1]] == [list(e[2]) for e in want[1]]  # key order too
        metas_got = [e[2] for e in got[1]]
        assert len({id(m) for m in metas_got}) == len(metas_got)  # no dict shared
        nested = [v for m in metas_got for v in m.values() if isinstance(v, dict | list)]
        assert len({id(v) for v in nested}) == len(nested)


def _with_status_bytes_of_an_earlier_entry(raw: bytes, memo_kind: str) -> bytes:
    """The frame with its last entry's FinishStatus bytes taken from the memo (BINGET) of
    the entry before it: its bytes (``memo_kind`` "bytes") or the tuple holding them
    ("tuple")."""
    ops = list(pickletools.genops(raw))
    memo_of: dict[int, int] = {}  # an opcode's position -> the memo index it was given
    count = 0
    for i, (op, _, _) in enumerate(ops):
        if op.name == "MEMOIZE":
            memo_of[ops[i - 1][2]] = count
            count += 1
    binbytes = [(i, pos) for i, (op, _, pos) in enumerate(ops) if op.name == "SHORT_BINBYTES"]
    (before, before_pos), (_, last_pos) = binbytes[-2], binbytes[-1]
    target = before_pos if memo_kind == "bytes" else ops[before + 2][2]  # its TUPLE2
    data = raw[:last_pos] + b"h" + bytes([memo_of[target]]) + raw[last_pos + 6 :]
    assert data[2] == 0x95  # FRAME: its length follows
    return data[:3] + (len(data) - 11).to_bytes(8, "little") + data[11:]


def test_a_finish_status_is_read_as_safepickle_reads_it_and_its_memo_never_again() -> None:
    """Every FinishStatus after a frame's first is read in one step. Its parts (its 4 bytes,
    its tuples) are in the memo, but a later reference to them is refused, by safepickle too
    (it takes a FinishStatus only written out)."""
    codec = LightLLMCodec("v1.1.0")
    statuses = [FinishStatus(0), FinishStatus(1), FinishStatus(0)]
    entries = [(8 * i, "t", {"id": i}, s) for i, s in enumerate(statuses, 1)]
    raw = codec.encode_token_packs(entries, {"total_token_usage_rate": 0.5})
    safe = LightLLMCodec(accelerated=False)
    fast = fast_decoder("v1.1.0")
    got = fast.decode(raw)
    assert got is not None and plain(got) == plain(safe.decode_node_message(raw))
    assert [e[3].status for e in got[1]] == [0, 1, 0]
    for part in ("bytes", "tuple"):
        again = _with_status_bytes_of_an_earlier_entry(raw, part)
        assert fast.decode(again) is None, part
        with pytest.raises(WireError):
            safe.decode_node_message(again)
