"""The simulated model: a deterministic output for every (prompt, parameters).

Rule (documented so tests and users can predict answers): the model repeats the prompt's
tokens in order, cycling, and emits its end-of-text token after ``2 x prompt tokens`` output
tokens, unless ``ignore_eos`` or ``min_new_tokens`` say otherwise. Generation also ends at
``max_new_tokens`` ("length") or right after a stop sequence's tokens ("stop", the stop text
included, as LightLLM does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdmodel.tokenizer import ModelTokenizer


@dataclass
class Generation:
    prompt_ids: list[int]
    max_new_tokens: int
    eos_id: int
    ignore_eos: bool = False
    min_new_tokens: int = 1
    stop_sequences: list[list[int]] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)

    def next_token(self) -> tuple[int, int]:
        """Append and return (token id, finish status: 0 running, 1 stop, 2 length)."""
        i = len(self.output_ids)
        natural_eos = not self.ignore_eos and i >= max(
            2 * len(self.prompt_ids), self.min_new_tokens - 1
        )
        token = self.eos_id if natural_eos else self.prompt_ids[i % len(self.prompt_ids)]
        self.output_ids.append(token)
        if natural_eos or self._hit_stop_sequence():
            return token, 1
        if len(self.output_ids) >= self.max_new_tokens:
            return token, 2
        return token, 0

    def _hit_stop_sequence(self) -> bool:
        out = self.output_ids
        if len(out) < self.min_new_tokens:
            return False
        return any(seq and out[-len(seq) :] == seq for seq in self.stop_sequences)


class Detokenizer:
    """Per-token text of an output, holding back bytes of an unfinished UTF-8 character."""

    def __init__(self, tokenizer: ModelTokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix : self._read], self._skip)
        full_text = decode(self._ids[self._prefix :], self._skip)
        if full_text.endswith("\ufffd"):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return full_text[len(prefix_text) :]
