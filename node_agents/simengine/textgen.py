"""The simulated model: a deterministic output for every (prompt, parameters).

Rule (documented so tests and users can predict answers): the model repeats the prompt's
tokens in order, cycling, and emits its end-of-text token after ``2 x prompt tokens`` output
tokens, unless ``ignore_eos`` or ``min_new_tokens`` say otherwise. Generation also ends at
``max_new_tokens`` ("length") or right after a stop sequence's tokens ("stop", the stop text
included, as LightLLM does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def __post_init__(self) -> None:
        # where the natural end-of-text falls, worked out once (next_token runs per token)
        self._eos_at = (
            None if self.ignore_eos else max(2 * len(self.prompt_ids), self.min_new_tokens - 1)
        )

    def next_token(self) -> tuple[int, int]:
        """Append and return (token id, finish status: 0 running, 1 stop, 2 length)."""
        out = self.output_ids
        i = len(out)
        eos_at = self._eos_at
        if eos_at is not None and i >= eos_at:
            out.append(self.eos_id)
            return self.eos_id, 1
        prompt = self.prompt_ids
        token = prompt[i % len(prompt)]
        out.append(token)
        if self.stop_sequences and self._hit_stop_sequence():
            return token, 1
        if i + 1 >= self.max_new_tokens:
            return token, 2
        return token, 0

    def _hit_stop_sequence(self) -> bool:
        out = self.output_ids
        if len(out) < self.min_new_tokens:
            return False
        return any(seq and out[-len(seq) :] == seq for seq in self.stop_sequences)


class Pieces:
    """What each token adds to an output's text, given the tokens of its window before it.

    ``Detokenizer`` would ask the tokenizer for two decodes per token; a node's outputs
    repeat their prompts, so the answers for short windows are kept (up to ``limit``, then
    forgotten at once), shared by the node's requests. None: the window ends inside a
    UTF-8 character.
    """

    WINDOW = 4  # longer windows (a character's bytes spread over tokens) are not kept

    def __init__(self, tokenizer: ModelTokenizer, limit: int = 1 << 16) -> None:
        self._decode = tokenizer.decode
        self._limit = limit
        self._known: dict[tuple[Any, ...], str | None] = {}

    def piece(self, window: list[int], before: int, skip: bool) -> str | None:
        """The text ``window[before:]`` adds after ``window[:before]``, or None."""
        if len(window) > self.WINDOW:
            return self._piece(window, before, skip)
        key = (skip, before, *window)
        known = self._known.get(key, self)
        if known is self:
            if len(self._known) >= self._limit:
                self._known.clear()
            known = self._known[key] = self._piece(window, before, skip)
        return known  # type: ignore[return-value]

    def pair(self, skip: bool, before_id: int, token_id: int) -> str | None:
        """``piece([before_id, token_id], 1, skip)``: the usual window, looked up without
        building a list first."""
        known = self._known.get((skip, 1, before_id, token_id), self)
        if known is self:
            return self.piece([before_id, token_id], 1, skip)
        return known  # type: ignore[return-value]

    def _piece(self, window: list[int], before: int, skip: bool) -> str | None:
        full = self._decode(window, skip)
        if full.endswith("\ufffd"):
            return None
        return full[len(self._decode(window[:before], skip)) :]


class Detokenizer:
    """Per-token text of an output, holding back bytes of an unfinished UTF-8 character."""

    def __init__(self, pieces: Pieces, skip_special_tokens: bool = True) -> None:
        self._pieces = pieces
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        ids = self._ids
        ids.append(token_id)
        prefix, read = self._prefix, self._read
        end = len(ids)
        if read - prefix == 1 and end - read == 1:  # the usual window: the last token, this one
            text = self._pieces.pair(self._skip, ids[prefix], token_id)
        else:
            text = self._pieces.piece(ids[prefix:], read - prefix, self._skip)
        if text is None:
            return ""
        self._prefix = read
        self._read = end
        return text
