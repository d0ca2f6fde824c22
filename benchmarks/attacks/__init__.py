"""The attacks of ``benchmarks.hostile_peers``, one module per family, and the cluster they
run against (``target``) from the attacker's address (``attacker``)."""
