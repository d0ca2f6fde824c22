"""Simulated LightLLM prefill/decode node for tests, demos and benchmarks."""
