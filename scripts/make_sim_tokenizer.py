"""Regenerate the simulated engine's tiny byte-level BPE tokenizer (pdmodel/model).

Run: python scripts/make_sim_tokenizer.py. The output is committed; the build is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = """
What is AI? Artificial intelligence is the field of computer science that builds systems able
to learn, reason, plan and understand language. Large language models predict the next token of
a text. A prefill node reads the whole prompt at once and computes its key value cache; a decode
node then generates one token at a time for many requests in a batch. Disaggregated serving puts
prefill and decode on different machines so that each can be tuned for its own work: prefill is
bound by compute, decode by memory bandwidth. The master picks a prefill node and a decode node
for every request, sends the prompt to the prefill node, waits until the cache has moved to the
decode node, and relays the generated tokens back to the client as a stream of events.
Hello world! The quick brown fox jumps over the lazy dog. Once upon a time there was a small
village by the sea, where people fished, sang songs and told stories about the stars.
Please write a short poem about the ocean. Explain how a transformer works in simple words.
Tell me a joke about computers. How many tokens per second can one GPU generate?
The answer is 42. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Questions, answers; lists: a, b, c.
"""
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>"]


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tokenizer


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "pdmodel" / "model"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build()
    tokenizer.save(str(out / "tokenizer.json"))
    bos, eos = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
    config = {"model_type": "pdctl-sim", "bos_token_id": bos, "eos_token_id": eos}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer_config = {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1]}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


if __name__ == "__main__":
    main()
