"""What the simulated model answers, computed independently of the engine's code.

The simulated model repeats the prompt's tokens cyclically and ends with end-of-text after
twice the prompt's length (node_agents/simengine/textgen.py documents the rule).
"""

from __future__ import annotations

import json

from pdmodel.tokenizer import ModelTokenizer


def expected(
    tokenizer: ModelTokenizer, prompt: str, max_new_tokens: int, ignore_eos: bool = False
) -> tuple[str, int, str]:
    ids = tokenizer.encode(prompt)
    out: list[int] = []
    for i in range(max_new_tokens):
        if not ignore_eos and i >= 2 * len(ids):
            out.append(tokenizer.eos_token_ids[0])
            return tokenizer.decode(out), len(out), "stop"
        out.append(ids[i % len(ids)])
    return tokenizer.decode(out), len(out), "length"


def sse_events(raw: str) -> list[dict]:
    events = []
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data:"), block
            events.append(json.loads(block[len("data:") :]))
    return events
