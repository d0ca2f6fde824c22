"""What the benchmark sends: prompts of a given token length, optional shared prefixes, and
arrival times (all at once, or Poisson at a request rate). Seeded, so runs repeat."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be "
    "or has had not but one their they all also its new more after first two other time about "
    "model token cache node request prefill decode serving latency batch memory network"
).split()


@dataclass(frozen=True)
class Workload:
    input_len: int
    output_len: int
    num_requests: int
    seed: int = 0
    shared_prefix_len: int = 0
    num_prefixes: int = 1
    request_rate: float = float("inf")


class PromptMaker:
    """Prompts of exactly ``n`` tokens with a tokenizer, else of ``n`` words (~1 token each)."""

    def __init__(self, tokenizer_path: str | None) -> None:
        self._tokenizer = None
        if tokenizer_path:
            file = Path(tokenizer_path)
            file = file / "tokenizer.json" if file.is_dir() else file
            if not file.is_file():
                raise FileNotFoundError(f"--tokenizer_path: no tokenizer.json at {file}")
            self._tokenizer = Tokenizer.from_file(str(file))

    def text(self, rng: random.Random, n: int) -> str:
        if n <= 0:
            return ""
        if self._tokenizer is None:
            return " ".join(rng.choice(WORDS) for _ in range(n))
        text = ""
        for _ in range(20):  # decoding a cut can re-tokenize differently: draw again
            words = " ".join(rng.choice(WORDS) for _ in range(n))
            ids = self._tokenizer.encode(words, add_special_tokens=False).ids
            while len(ids) < n:
                ids += self._tokenizer.encode(" " + rng.choice(WORDS), add_special_tokens=False).ids
            text = self._tokenizer.decode(ids[:n])
            if self.count(text) == n:
                break
        return text

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def build_prompts(workload: Workload, maker: PromptMaker) -> list[str]:
    rng = random.Random(workload.seed)
    prefix_len = min(workload.shared_prefix_len, workload.input_len)
    prefixes = [maker.text(rng, prefix_len) for _ in range(max(workload.num_prefixes, 1))]
    prompts = []
    for _ in range(workload.num_requests):
        head = rng.choice(prefixes) if prefix_len else ""
        tail = maker.text(rng, workload.input_len - prefix_len)
        prompts.append(f"{head} {tail}" if head else tail)
    return prompts


def output_lengths(workload: Workload, spread: str) -> list[int]:
    """Tokens to generate per request: ``fixed`` (``output_len`` each), or ``lightllm``, as
    LightLLM's benchmark_client draws them: a normal with mean and deviation
    (2 + 2 * output_len) / 2, rounded and clipped to [2, 2 * output_len]."""
    if spread == "fixed":
        return [workload.output_len] * workload.num_requests
    rng = random.Random(workload.seed + 2)
    low, high = 2, 2 * workload.output_len
    mean = (low + high) / 2
    return [min(max(round(rng.gauss(mean, mean)), low), high) for _ in range(workload.num_requests)]


def arrival_offsets(workload: Workload) -> list[float]:
    """Seconds after the start at which each request is sent (0 for all: closed loop)."""
    if workload.request_rate == float("inf"):
        return [0.0] * workload.num_requests
    rng = random.Random(workload.seed + 1)
    t, out = 0.0, []
    for _ in range(workload.num_requests):
        out.append(t)
        t += rng.expovariate(workload.request_rate)
    return out
