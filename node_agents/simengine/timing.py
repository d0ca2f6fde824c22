"""The simulated engine's timing and memory model.

prefill time    = prefill_base_ms + prefill_per_token_us x prompt tokens of the batch
decode step     = decode_base_ms + decode_per_seq_us x running sequences
KV transfer     = kv_bytes_per_token x tokens / kv_bandwidth
KV capacity     = kv_capacity_tokens per node; a request waits while it does not fit
All times are multiplied by ``time_scale`` (0.1 runs the same shape ten times faster).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class TimingModel:
    prefill_base_ms: float = 5.0
    prefill_per_token_us: float = 20.0
    decode_base_ms: float = 10.0
    decode_per_seq_us: float = 50.0
    kv_bytes_per_token: int = 70_000
    kv_bandwidth_gbps: float = 25.0
    kv_capacity_tokens: int = 200_000
    batch_max_tokens: int = 16_384
    time_scale: float = 1.0

    def prefill_s(self, tokens: int) -> float:
        return (
            self.prefill_base_ms / 1e3 + self.prefill_per_token_us / 1e6 * tokens
        ) * self.time_scale

    def decode_step_s(self, batch: int) -> float:
        return (self.decode_base_ms / 1e3 + self.decode_per_seq_us / 1e6 * batch) * self.time_scale

    def kv_transfer_s(self, tokens: int) -> float:
        seconds = self.kv_bytes_per_token * tokens / (self.kv_bandwidth_gbps * 1e9)
        return seconds * self.time_scale


class KVCapacity:
    """Token slots of a node's KV cache; ``reserve`` waits until a request fits."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self.used = 0
        self._freed = asyncio.Condition()

    async def reserve(self, tokens: int) -> int:
        tokens = min(tokens, self.capacity)
        async with self._freed:
            await self._freed.wait_for(lambda: self.used + tokens <= self.capacity)
            self.used += tokens
        return tokens

    async def release(self, tokens: int) -> None:
        async with self._freed:
            self.used -= tokens
            self._freed.notify_all()

    @property
    def usage_rate(self) -> float:
        return self.used / self.capacity if self.capacity else 0.0
