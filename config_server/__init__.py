"""The config server: registry of PD masters and nodes, LightLLM's multi-master API and ours."""
