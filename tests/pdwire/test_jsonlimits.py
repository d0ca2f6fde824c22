from __future__ import annotations

import random
import re

import pytest

from pdwire import jsonlimits


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("depth", [1, 2, 15, 16])
def test_a_document_as_deep_as_the_limit_is_read(depth: int) -> None:
    value = jsonlimits.loads(nested(depth), max_bytes=1024, max_depth=16)
    for _ in range(depth):
        value = value[0]
    assert value == 1


@pytest.mark.parametrize("depth", [17, 18, 200])
def test_a_document_deeper_than_the_limit_is_refused(depth: int) -> None:
    with pytest.raises(jsonlimits.JsonRefused, match="deeper than 16"):
        jsonlimits.loads(nested(depth), max_bytes=4096, max_depth=16)


def test_brackets_inside_strings_are_not_depth() -> None:
    shallow = b'{"a": "' + b"[{" * 40 + b'", "b": ["]]]", "{{{"]}'
    assert jsonlimits.loads(shallow, max_bytes=4096, max_depth=2)["b"] == ["]]]", "{{{"]
    deep = b'{"s": "[[[["' + b', "x": [[[1]]]}'
    with pytest.raises(jsonlimits.JsonRefused, match="deeper than 3"):
        jsonlimits.loads(deep, max_bytes=4096, max_depth=3)


def test_a_128_bit_id_stays_exact() -> None:
    frame = f'{{"type": "kv_move_status", "pd_master_node_id": {2**128 - 1}}}'
    assert jsonlimits.loads(frame, max_bytes=1024)["pd_master_node_id"] == 2**128 - 1


def typed(value: object) -> object:
    """``value`` with every number's type and exact bits spelled out (1 != 1.0, 0.0 != -0.0)."""
    if isinstance(value, dict):
        return [("key", k, typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def read_both(doc: bytes) -> tuple[object, object]:
    """What ``loads`` and Python's parser alone make of ``doc``: a value or the refusal."""
    answers = []
    for read in (
        lambda: jsonlimits.loads(doc, max_bytes=1 << 20),
        lambda: jsonlimits.python_loads(doc),
    ):
        try:
            answers.append(typed(read()))
        except jsonlimits.JsonRefused as exc:
            answers.append(("refused", str(exc)))
    return answers[0], answers[1]


EDGES = [
    b'{"type": "kv_move_status", "group_request_id": 8, "dp_index": 0, "pd_master_node_id": 0}',
    b"1",
    b"-0",
    b"-0.0",
    b"0.0",
    b"1.0",
    b"1E2",
    b"1e-400",
    b"4.9e-324",
    b"1.7976931348623157e308",
    b"1e400",
    b"-1e400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"[1, 2",
    b"[1,]",
    b"1 2",
    b"",
    b"9" * 18,
    b"-" + b"9" * 18,
    b"9" * 19,
    b"9223372036854775807",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9" * 39,
    b"9" * 40,
    b"1" * 19 + b".5",
    b'"\\ud800"',
    b'["\\udc00", 1]',
    b'"\\ud83d\\ude00"',
    b'"\xed\xa0\x80"',
    b'"\xff"',
    b"\xef\xbb\xbf[1]",
    '[1, "a"]'.encode("utf-16"),
    b'"a\x01b"',
    b'"a\x7fb"',
    b" \t\n\r[1] ",
    b'{"a": 1, "b": 2, "a": 3}',
    b'{"a": [true, false, null, {}, []], "\\u00e9": "\\n"}',
    b"[1]\x00",
    b"01",
    b"1.",
    b".5",
    b"-",
    b"+1",
    b'"\\x"',
    b"[[[[1]]]]",
]


@pytest.mark.parametrize("doc", EDGES)
def test_a_document_reads_as_pythons_parser_reads_it(doc: bytes) -> None:
    fast, python = read_both(doc)
    assert fast == python


def test_random_numbers_read_as_pythons_parser_reads_them() -> None:
    rng = random.Random(17)
    fast_path = 0
    for _ in range(4000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 21)))
        number = rng.choice(["", "-"]) + (digits.lstrip("0") or "0")
        if rng.random() < 0.6:
            number += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 17)))
        if rng.random() < 0.5:
            number += rng.choice("eE") + rng.choice(["", "-", "+"]) + str(rng.randint(0, 330))
        whole = rng.randint(-(10 ** rng.randint(0, 21)), 10 ** rng.randint(0, 21))
        doc = f'{{"n": [{number}, {whole}]}}'.encode()
        fast, python = read_both(doc)
        assert fast == python, doc
        fast_path += not re.search(rb"[0-9]{19}", doc)
    assert fast_path > 2000  # most documents are orjson's to read


@pytest.mark.parametrize(
    ("doc", "limit"), [(b"[12345]", 4), (b"[-12345]", 4), (b"[" + b"9" * 40 + b"]", 39)]
)
def test_an_integer_longer_than_the_limit_is_refused(doc: bytes, limit: int) -> None:
    with pytest.raises(jsonlimits.JsonRefused, match=f"the limit is {limit}"):
        jsonlimits.loads(doc, max_bytes=1024, max_int_digits=limit)


def test_an_integer_as_long_as_the_limit_is_read() -> None:
    assert jsonlimits.loads(b"[-1234, 5678]", max_bytes=1024, max_int_digits=4) == [-1234, 5678]
