"""Wire formats of pdctl; no I/O.

LightLLM's PD protocol codec per version, the client API formats masters and nodes share
(LightLLM's /generate bodies and SSE events), our /v1 JSON models and error bodies.
"""
