"""CIDR parsing and printing as Go's net.ParseCIDR / IPNet.String do, on `_socket` only.

Why not `ipaddress`: it costs an import of functools on the ADD path, and what the plugin needs is
small: mask FLANNEL_SUBNET to its network (10.244.1.1/24 -> 10.244.1.0/24), check that route
destinations and gateways parse, and compare addresses in CHECK.

Printing follows Go, not glibc's inet_ntop, which differs for two kinds of IPv6 address: glibc
writes the deprecated IPv4-compatible form (`::0.1.0.2` for `::1:2`) and `::ffff:1.2.3.4`, where
Go's IP.String writes `::1:2` (RFC 5952 hex, netip's appendTo6) and `1.2.3.4` (IP.To4 succeeds
for IPv4-mapped addresses), and IPNet.String then also prints the mask of a mapped network as
IPv4 (networkNumberAndMask: mask[12:], so `::ffff:10.1.2.3/120` -> `10.1.2.3/24`).
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


_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _mapped(packed: bytes) -> bool:
    return len(packed) == 16 and packed[:12] == _MAPPED_PREFIX


def format_ip(family: int, packed: bytes) -> str:
    """Go's net.IP.String."""
    if family == 4 or _mapped(packed):
        return str(_socket.inet_ntop(_socket.AF_INET, packed[-4:]))
    groups = [int.from_bytes(packed[i:i + 2], "big") for i in range(0, 16, 2)]
    # The first longest run of >= 2 zero groups becomes "::" (netip appendTo6).
    start, end = -1, -1
    for i in range(8):
        j = i
        while j < 8 and groups[j] == 0:
            j += 1
        if j - i >= 2 and j - i > end - start:
            start, end = i, j
    if start < 0:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:start])
    tail = ":".join(f"{g:x}" for g in groups[end:])
    return f"{head}::{tail}"


def _format_net(family: int, packed: bytes, plen: int) -> str:
    """Go's net.IPNet.String for a mask made by CIDRMask(plen, bits of the address)."""
    if family == 6 and _mapped(packed):
        plen = max(0, plen - 96)
    return f"{format_ip(family, packed)}/{plen}"


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
    return _format_net(family, mask(packed, plen), plen)


def canonical(text: str) -> str:
    """Go's types.IPNet round trip: the address as written (not masked), canonical form."""
    family, packed, plen = parse_cidr(text)
    return _format_net(family, packed, plen)


def canonical_ip(text: str) -> str:
    family, packed = parse_ip(text)
    return format_ip(family, packed)
