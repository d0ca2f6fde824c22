"""Per-node agents that supervise LightLLM (or the simulated engine)."""
