"""A master's link to the config server: registration, group id ranges, node drains.

Registration goes both ways the cluster knows masters: LightLLM's websocket and the /v1 lease.
"""
