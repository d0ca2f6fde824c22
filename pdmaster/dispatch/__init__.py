"""The PD dispatch core: one session per client request over a (prefill, decode) pair.

Each protocol version's flow runs inside a session with the same retries and deadlines.
"""
