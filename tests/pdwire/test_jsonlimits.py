from __future__ import annotations

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
