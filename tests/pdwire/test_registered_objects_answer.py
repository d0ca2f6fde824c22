"""``GET /registered_objects``'s JSON answer, decoded in one place for every reader."""

from __future__ import annotations

import base64

import pytest

from pdwire.errors import MalformedMessageError
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj


def test_decodes_the_base64_pickle() -> None:
    objs = {7: PD_Master_Obj(7, "10.0.0.1:60011")}
    data = base64.b64encode(LightLLMCodec.encode_registered_objects(objs)).decode()
    decoded = LightLLMCodec().decode_registered_objects_answer({"data": data})
    assert {k: v.host_ip_port for k, v in decoded.items()} == {7: "10.0.0.1:60011"}


@pytest.mark.parametrize("answer", [[], {}, {"data": 5}, {"data": "not base64!"}])
def test_refuses_other_shapes(answer: object) -> None:
    with pytest.raises(MalformedMessageError):
        LightLLMCodec().decode_registered_objects_answer(answer)
