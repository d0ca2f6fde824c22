"""Timing profiles of the simulated engine, derived from published figures.

``deepseek-v3-h200``: one 8xH200 node running DeepSeek-V3/R1 with EP (``--tp 8 --dp 8``).

DeepSeek's inference system overview (Feb 2025) reports, per H800 node of their PD
deployment: about 73.7k input tokens/s per prefill node (cache hits included) and about
14.8k output tokens/s per decode node, at 20-22 output tokens/s per user; MLA keeps about
70 KB of KV cache per token (70,272 bytes).

* Prefill is compute-bound; an H200 has the H800's tensor throughput, so the per-token cost
  stays 1 / 73.7k s = 13.6 us. A batch also pays a fixed ~20 ms (scheduling, all-to-all
  dispatch/combine of EP, MoE gating), which 73.7k tokens/s hides at 4k+ token batches.
* Decode: 14.8k tok/s at ~21 tok/s per user means ~700 running sequences per node and a
  step of 1/21 s = 47.6 ms. With a fixed step cost of ~20 ms (EP communication, kernel
  launches, CUDA graphs), the rest is (47.6 - 20) / 700 = 39 us per sequence on H800.
  Decode is bound by memory bandwidth, and H200 has 4.8 TB/s against H800's 3.35 TB/s
  (x1.43), so per-sequence cost is 39 / 1.43 = 27 us and the fixed cost ~18 ms.
* KV capacity: 8 x 141 GB of HBM less ~700 GB of FP8 weights and ~10% for activations
  leaves ~300 GB, which at 70 KB per token is ~4.2M tokens per node.
* KV hand-off: P2P over 8 x 400 Gb/s RDMA NICs (400 GB/s raw); at an effective ~100 GB/s a
  1k-token prompt (72 MB) moves in 0.7 ms.

``demo`` (the default) is faster and small enough for a laptop demo and the tests.
``--time_scale`` multiplies every time, so the same shape can run faster in tests.
"""

from __future__ import annotations

from node_agents.simengine.timing import TimingModel

PROFILES: dict[str, TimingModel] = {
    "demo": TimingModel(),
    "deepseek-v3-h200": TimingModel(
        prefill_base_ms=20.0,
        prefill_per_token_us=13.6,
        decode_base_ms=18.0,
        decode_per_seq_us=27.0,
        kv_bytes_per_token=70_272,
        kv_bandwidth_gbps=100.0,
        kv_capacity_tokens=4_200_000,
        batch_max_tokens=65_536,
    ),
}
