"""Choosing where a request goes: pure policies, pair selection, admission control.

Policies know nothing of prefill/decode; selection filters each pool and asks its policy.
"""
