"""The prefill node's simulated prompt cache: an LRU of 16-token prompt blocks.

A prompt whose leading blocks are cached only computes the rest, so prefill is faster and
``prompt_cache_len`` in the token metadata says how much was reused (as LightLLM reports).
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK = 16


class PrefixCache:
    def __init__(self, capacity_tokens: int) -> None:
        self._max_blocks = max(capacity_tokens // BLOCK, 0)
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.prompt_tokens = 0
        self.cached_tokens = 0

    def lookup_and_insert(self, prompt_ids: list[int]) -> int:
        """Tokens of the prompt already cached; the prompt's blocks become most recent."""
        hashes, h = [], 0
        for start in range(0, len(prompt_ids) - BLOCK + 1, BLOCK):
            h = hash((h, tuple(prompt_ids[start : start + BLOCK])))
            hashes.append(h)
        matched = 0
        for h in hashes:
            if h not in self._blocks:
                break
            matched += 1
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self._max_blocks:
            self._blocks.popitem(last=False)
        cached = matched * BLOCK
        self.prompt_tokens += len(prompt_ids)
        self.cached_tokens += cached
        return cached

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
