"""Pure subnet allocation rules: which lease is ours, which subnets are free, which to take.

Mirrors Go flannel's ``tryAcquireLease`` and ``allocateSubnet`` (pkg/subnet/etcd/
local_manager.go): reuse the lease holding our PublicIP, else the subnet recorded in the subnet
file, else a random pick among up to 100 free subnets walking up from SubnetMin.  With
EnableIPv6 the IPv6 half is picked the same way between IPv6SubnetMin and IPv6SubnetMax.  The
walk is bounded by the limit plus the number of keys in the way, never by the size of the range
(an IPv6 range may hold 2^64 subnets).  A subnet is free when no key's subnet overlaps it
(Go's ``Overlaps``), whatever that key's prefix length.  Reservations (keys without an etcd
lease) are never handed to anyone else.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import TypeVar

from flanneld.errors import OutOfSubnetsError
from flanneld.lease import Lease
from flanneld.netconfig import NetworkConfig

N = TypeVar("N", IPv4Network, IPv6Network)

MAX_CANDIDATES = 100


def find_by_public_ip(leases: Iterable[Lease], public_ip: IPv4Address) -> Lease | None:
    for lease in leases:
        if lease.attrs.public_ip == public_ip:
            return lease
    return None


def _ranges(taken: Iterable[IPv4Network | IPv6Network]) -> list[tuple[int, int]]:
    """The taken subnets as sorted, merged [start, end) integer ranges."""
    spans = sorted((int(n.network_address), int(n.network_address) + n.num_addresses) for n in taken)
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _free_starts(first: int, last: int, size: int, taken: list[tuple[int, int]],
                 limit: int) -> list[int]:
    """Start addresses of up to ``limit`` subnets ``first, first+size, ... <= last`` that no
    taken range overlaps.  Each step either finds one or jumps past a taken range, so the walk
    takes at most ``limit + len(taken)`` steps."""
    found: list[int] = []
    addr, i = first, 0
    while addr <= last and len(found) < limit:
        while i < len(taken) and taken[i][1] <= addr:
            i += 1
        if i < len(taken) and taken[i][0] < addr + size:
            # skip to the first aligned subnet at or past the end of the taken range
            addr = first + -(-(taken[i][1] - first) // size) * size
            continue
        found.append(addr)
        addr += size
    return found


def _overlaps_any(subnet: IPv4Network | IPv6Network, taken: list[tuple[int, int]]) -> bool:
    start = int(subnet.network_address)
    end = start + subnet.num_addresses
    return any(s < end and start < e for s, e in taken)


def free_subnets(
    config: NetworkConfig, taken: Collection[IPv4Network], limit: int = MAX_CANDIDATES
) -> list[IPv4Network]:
    """Up to ``limit`` subnets between SubnetMin and SubnetMax that no key's subnet overlaps."""
    starts = _free_starts(int(config.subnet_min), int(config.subnet_max),
                          1 << (32 - config.subnet_len), _ranges(taken), limit)
    return [IPv4Network((addr, config.subnet_len)) for addr in starts]


def free_ipv6_subnets(
    config: NetworkConfig, taken: Collection[IPv6Network], limit: int = MAX_CANDIDATES
) -> list[IPv6Network]:
    """Up to ``limit`` IPv6 subnets between IPv6SubnetMin and IPv6SubnetMax that no key's IPv6
    half overlaps ([] without EnableIPv6)."""
    if config.ipv6_subnet_min is None or config.ipv6_subnet_max is None:
        return []
    starts = _free_starts(int(config.ipv6_subnet_min), int(config.ipv6_subnet_max),
                          1 << (128 - config.ipv6_subnet_len), _ranges(taken), limit)
    return [IPv6Network((addr, config.ipv6_subnet_len)) for addr in starts]


def out_of_subnets(config: NetworkConfig) -> OutOfSubnetsError:
    family = " (IPv4)" if config.enable_ipv6 else ""  # IPv4-only: Go's words, unchanged
    return OutOfSubnetsError(
        f"out of subnets{family}: every /{config.subnet_len} of Network {config.network} between "
        f"SubnetMin {config.subnet_min} and SubnetMax {config.subnet_max} "
        f"({config.subnet_count} subnets) is leased or reserved"
    )


def out_of_ipv6_subnets(config: NetworkConfig) -> OutOfSubnetsError:
    return OutOfSubnetsError(
        f"out of subnets (IPv6): every /{config.ipv6_subnet_len} of IPv6Network "
        f"{config.ipv6_network} between IPv6SubnetMin {config.ipv6_subnet_min} and "
        f"IPv6SubnetMax {config.ipv6_subnet_max} ({config.ipv6_subnet_count} subnets) is leased "
        "or reserved"
    )


def pick_subnet(
    config: NetworkConfig,
    taken: Collection[IPv4Network],
    previous: IPv4Network | None,
    rng: random.Random,
) -> IPv4Network:
    """The previous subnet if it is free and fits the config, else a random free one."""
    if _reusable(previous, taken, config.contains_subnet):
        assert previous is not None
        return previous
    return _choose(free_subnets(config, taken), lambda: out_of_subnets(config), rng)


def pick_ipv6_subnet(
    config: NetworkConfig,
    taken: Collection[IPv6Network],
    previous: IPv6Network | None,
    rng: random.Random,
) -> IPv6Network:
    """The IPv6 half: the previous one (FLANNEL_IPV6_SUBNET) if it is free and fits the config,
    else a random pick among the first free ones from IPv6SubnetMin up (``rng`` decides)."""
    if _reusable(previous, taken, config.contains_ipv6_subnet):
        assert previous is not None
        return previous
    return _choose(free_ipv6_subnets(config, taken), lambda: out_of_ipv6_subnets(config), rng)


def _reusable(previous: N | None, taken: Collection[N], fits: Callable[[N], bool]) -> bool:
    """A previous subnet is reused when it fits the config and no key overlaps it."""
    return previous is not None and fits(previous) and not _overlaps_any(previous, _ranges(taken))


def _choose(candidates: Sequence[N], exhausted: Callable[[], Exception], rng: random.Random) -> N:
    if not candidates:
        raise exhausted()
    return rng.choice(candidates)
