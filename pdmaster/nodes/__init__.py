"""The node side of a master: node websockets, the node pool, per-request tracking.

The pool is the one owner of node state, each node's breaker and load; the poller refreshes load.
"""
