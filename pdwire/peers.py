"""Peer address allowlists (``--allow-cidr``), shared by every server that takes LightLLM's
peers: LightLLM's masters and nodes cannot send tokens, so their endpoints are guarded by
the caller's address instead; with no networks configured every peer is accepted."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def split_cidrs(values: Iterable[str]) -> tuple[str, ...]:
    """``["10.0.0.0/8,127.0.0.1", ...]`` -> the networks, each checked (ValueError if bad)."""
    cidrs = tuple(c.strip() for value in values for c in value.split(",") if c.strip())
    for cidr in cidrs:
        ipaddress.ip_network(cidr, strict=False)
    return cidrs


class NetworkAllowlist:
    """Client addresses allowed; empty means everyone."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs]

    @property
    def open(self) -> bool:
        return not self.networks

    def allows(self, host: str | None) -> bool:
        if self.open:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
