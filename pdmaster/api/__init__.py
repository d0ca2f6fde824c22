"""The client-facing APIs: LightLLM's /generate, OpenAI's, Anthropic's, the admin API.

Also the direct write path that streams token chunks straight to the client's transport.
"""
