"""The simulated model's per-token text: what a node's Detokenizers share gives the same text."""

from __future__ import annotations

import random

from node_agents.simengine.textgen import Detokenizer, Pieces
from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer


def two_decodes(tokenizer: ModelTokenizer, ids: list[int], skip: bool) -> list[str]:
    """Each token's text as an incremental detokenizer computes it, two decodes per token."""
    out, prefix, read = [], 0, 0
    for n in range(1, len(ids) + 1):
        head = tokenizer.decode(ids[prefix:read], skip)
        full = tokenizer.decode(ids[prefix:n], skip)
        if full.endswith("\ufffd"):
            out.append("")
            continue
        out.append(full[len(head) :])
        prefix, read = read, n
    return out


def test_shared_pieces_give_each_token_the_text_two_decodes_give() -> None:
    tokenizer = ModelTokenizer.from_model_dir(DEFAULT_MODEL_DIR)
    # byte-level pieces of characters spread over tokens, words, and special tokens
    words = ["é", "😀", "中文", "naïve", " the", "\n", "🇫🇷", "𝔘"]
    pool = sorted({i for w in words for i in tokenizer.encode(w)} | set(tokenizer.eos_token_ids))
    rng = random.Random(5)
    shared = Pieces(tokenizer, limit=64)  # small: forgets often, and must not change a text
    checked = 0
    for _ in range(300):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 24))]
        skip = rng.random() < 0.7
        for pieces in (shared, Pieces(tokenizer)):
            detok = Detokenizer(pieces, skip)
            assert [detok.push(i) for i in ids] == two_decodes(tokenizer, ids, skip)
        checked += len(ids)
    assert checked > 2000
