"""pdctl's PD master: LightLLM's client API in front, LightLLM's node protocol behind."""
