from __future__ import annotations

import asyncio
import time

import pytest

from node_agents.simengine.engine import NodeIdentity, SimNode
from node_agents.simengine.timing import TimingModel
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import TokenEntry
from pdwire.structs import FinishStatus


class Link:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_now(self, data: bytes) -> bool:
        return False  # as a link with something in the way: the frame goes to ``send``

    async def send(self, data: bytes) -> bool:
        self.frames.append(data)
        return True


@pytest.mark.parametrize("tokens", [3, 3000])  # one pickle frame, and several
def test_timestamp_tokens_carry_the_time_their_frame_is_sent(tokens: int) -> None:
    codec = LightLLMCodec()
    tokenizer = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
    node = SimNode(NodeIdentity(1, "decode", "127.0.0.1", 1), codec, tokenizer, TimingModel())
    node.stamp_tokens = True
    link = Link()
    entries: list[TokenEntry] = [(8 * i, "x", {"id": i}, FinishStatus(0)) for i in range(tokens)]
    before = time.time()
    asyncio.run(node.send_tokens({link: entries}))  # type: ignore[dict-item]
    _, payload, _ = codec.decode_node_message(link.frames[0])
    stamps = {float(e[1]) for e in codec.decode_token_packs(payload)}
    assert len(stamps) == 1 and before <= stamps.pop() <= time.time()
