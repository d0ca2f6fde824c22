"""pd-bench: load generator for LightLLM-style and OpenAI-style streaming endpoints."""
