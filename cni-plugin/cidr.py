"""CIDR parsing and printing as Go's net.ParseCIDR / IPNet.String do, on `_socket` only.

Why not `ipaddress`: it costs an import of functools on the ADD path, and what the plugin needs is
small: mask FLANNEL_SUBNET to its network (10.244.1.1/24 -> 10.244.1.0/24), check that route
destinations and gateways parse, and compare addresses in CHECK.
"""

from __future__ import annotations

import _socket

_AF = {4: _socket.AF_INET, 6: _socket.AF_INET6}


class CidrError(ValueError):
    """Not an IP address or CIDR Go would accept."""


def parse_ip(text: str) -> tuple[int, bytes]:
    """Return (family 4|6, packed address)."""
    family = 6 if ":" in text else 4
    if "%" in text:
        raise CidrError(f"invalid IP address: {text}")
    try:
        return family, _socket.inet_pton(_AF[family], text)
    except (OSError, ValueError):
        raise CidrError(f"invalid IP address: {text}") from None


def format_ip(family: int, packed: bytes) -> str:
    return str(_socket.inet_ntop(_AF[family], packed))


def parse_cidr(text: str) -> tuple[int, bytes, int]:
    """Return (family, packed address as written, prefix length)."""
    addr, sep, plen_text = text.partition("/")
    if not sep or not plen_text.isdigit() or not plen_text.isascii():
        raise CidrError(f"invalid CIDR address: {text}")
    try:
        family, packed = parse_ip(addr)
    except CidrError:
        raise CidrError(f"invalid CIDR address: {text}") from None
    plen = int(plen_text)
    if plen > len(packed) * 8:
        raise CidrError(f"invalid CIDR address: {text}")
    return family, packed, plen


def mask(packed: bytes, plen: int) -> bytes:
    bits = len(packed) * 8
    value = int.from_bytes(packed, "big")
    keep = ((1 << plen) - 1) << (bits - plen) if plen else 0
    return (value & keep).to_bytes(len(packed), "big")


def network(text: str) -> str:
    """Go's `_, n, _ := net.ParseCIDR(text); n.String()`: the masked network."""
    family, packed, plen = parse_cidr(text)
    return f"{format_ip(family, mask(packed, plen))}/{plen}"


def canonical(text: str) -> str:
    """Go's types.IPNet round trip: the address as written (not masked), canonical form."""
    family, packed, plen = parse_cidr(text)
    return f"{format_ip(family, packed)}/{plen}"


def canonical_ip(text: str) -> str:
    family, packed = parse_ip(text)
    return format_ip(family, packed)
