"""Benchmarks: each ``python -m benchmarks.<name> [--smoke]`` prints a table and writes JSON."""
