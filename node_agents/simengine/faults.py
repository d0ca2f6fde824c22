"""Fault knobs of the simulated engine, set by flag or at run time through /sim/faults.

fail_rate           fraction of requests a node silently drops (no token ever comes back;
                    v1.2.0: a P that never uploads the prompt ids, a D that never reserves)
extra_latency_ms    added to every prefill batch and decode step
drop_kv_rate        fraction of KV hand-offs a decode node takes but never reports
                    (v1.2.0: fails, ending the request with FINISHED_ERROR as LightLLM's D does)
hang                the node stops working: frames ignored, no tokens, /health never answers
crash_after_tokens  the process exits once it has sent this many tokens (0 = never)
no_heartbeat        v1.2.0: the node stops sending its HEARTBEAT frames
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Faults:
    fail_rate: float = 0.0
    extra_latency_ms: float = 0.0
    drop_kv_rate: float = 0.0
    hang: bool = False
    crash_after_tokens: int = 0
    no_heartbeat: bool = False
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    @property
    def extra_latency_s(self) -> float:
        return self.extra_latency_ms / 1e3

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rng"}

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; unknown keys or bad values raise ValueError naming the key."""
        current = self.as_dict()
        for key, value in changes.items():
            if key not in current:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(current)}")
            kind = type(current[key])
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise ValueError(f"fault {key!r} must be {kind.__name__}, got {value!r}")
            if key.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {key!r} must be between 0 and 1, got {value!r}")
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"fault {key!r} must not be negative, got {value!r}")
        for key, value in changes.items():
            setattr(self, key, float(value) if type(current[key]) is float else value)
