"""Running pdctl on one machine: process launchers for etcd, config servers, masters, nodes.

Shared by tests, benchmarks and local runs; nothing in production imports it.
"""
