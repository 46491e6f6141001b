"""Pure subnet allocation rules: which lease is ours, which subnets are free, which to take.

Mirrors Go flannel's ``tryAcquireLease``: reuse the lease holding our PublicIP, else the subnet
recorded in the subnet file, else a random pick among up to 100 free subnets walking up from
SubnetMin.  Reservations (keys without an etcd lease) are never handed to anyone else.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from ipaddress import IPv4Address, IPv4Network

from flanneld.errors import OutOfSubnetsError
from flanneld.lease import Lease
from flanneld.netconfig import NetworkConfig

MAX_CANDIDATES = 100


def find_by_public_ip(leases: Iterable[Lease], public_ip: IPv4Address) -> Lease | None:
    for lease in leases:
        if lease.attrs.public_ip == public_ip:
            return lease
    return None


def free_subnets(
    config: NetworkConfig, taken: Collection[IPv4Network], limit: int = MAX_CANDIDATES
) -> list[IPv4Network]:
    """Up to ``limit`` subnets between SubnetMin and SubnetMax that no key holds."""
    size = 1 << (32 - config.subnet_len)
    taken_starts = {int(s.network_address) for s in taken}
    found: list[IPv4Network] = []
    addr = int(config.subnet_min)
    last = int(config.subnet_max)
    while addr <= last and len(found) < limit:
        if addr not in taken_starts:
            found.append(IPv4Network((addr, config.subnet_len)))
        addr += size
    return found


def out_of_subnets(config: NetworkConfig) -> OutOfSubnetsError:
    return OutOfSubnetsError(
        f"out of subnets: every /{config.subnet_len} of Network {config.network} between "
        f"SubnetMin {config.subnet_min} and SubnetMax {config.subnet_max} "
        f"({config.subnet_count} subnets) is leased or reserved"
    )


def pick_subnet(
    config: NetworkConfig,
    taken: Collection[IPv4Network],
    previous: IPv4Network | None,
    rng: random.Random,
) -> IPv4Network:
    """The previous subnet if it is free and fits the config, else a random free one."""
    if previous is not None and previous not in taken and config.contains_subnet(previous):
        return previous
    candidates = free_subnets(config, taken)
    if not candidates:
        raise out_of_subnets(config)
    return rng.choice(candidates)
