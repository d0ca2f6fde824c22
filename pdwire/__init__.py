"""Wire formats of pdctl: LightLLM's PD protocol codec and our JSON API models. No I/O."""
