"""Which leases from etcd may reach a backend: one validation, pure, applied to every lease.

Why: anyone who can write one key under ``<prefix>/subnets/`` (a buggy tool, a compromised
node, a typo) used to be able to take a node's network down.  A lease for ``198.18.0.0/25``
(outside the Network) made every vxlan node route its own underlay into flannel.1; a ``/25``
inside a node's ``/24`` hijacked half of it; ``PublicIP`` 0.0.0.0 became an fdb entry.  Go
flannel (v0.20.2) accepts all of these.  Here a lease is accepted only when:

- its subnet lies inside Network and has prefix SubnetLen (so two accepted leases are either
  the same key or disjoint: no overlap is possible between accepted leases of one family; a
  second key naming the same subnet, e.g. with another IPv6 half, is settled by the lease
  book: the key created first wins);
- its PublicIP is a usable unicast address (not unspecified, loopback, multicast, broadcast
  or reserved) outside the Network (an underlay address inside the overlay would loop);
- its subnet covers none of the protected addresses: the node's own underlay addresses and
  the etcd endpoints' addresses (matters when a Network was configured over the underlay);
- its backend data is usable for its BackendType (vxlan: ``VtepMAC`` a unicast MAC that is not
  all zeros: an all-zero fdb entry is the device's default destination).

Each refusal is a :class:`Rejection` with a reason (a closed set, also the metric label) and
a detail that names the field.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flanneld.lease import Lease, key_name
from flanneld.netops import normalize_mac


class RejectReason(enum.StrEnum):
    """Why a key under ``subnets/`` is not used; the values are the metric's label values."""

    BAD_KEY = "bad_key"  # the key is not a.b.c.d-len
    BAD_VALUE = "bad_value"  # the value is not lease JSON
    OUTSIDE_NETWORK = "outside_network"
    WRONG_PREFIX_LENGTH = "wrong_prefix_length"
    OVERLAP = "overlap"  # another key, created earlier, holds the same subnet
    BAD_PUBLIC_IP = "bad_public_ip"
    COVERS_UNDERLAY = "covers_underlay"
    BAD_BACKEND_DATA = "bad_backend_data"


REJECT_REASONS = tuple(r.value for r in RejectReason)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A key that is not used, and why; ``revision`` is the key's mod revision."""

    key: str  # the etcd key, as stored (``name`` is what follows /subnets/)
    reason: RejectReason
    detail: str
    revision: int = 0
    # The lease, when the key and value decoded but the lease broke a rule: the drift pass
    # removes kernel routes that only this lease explains (installed before it was refused).
    lease: Lease | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return key_name(self.key)


def public_ip_problem(ip: IPv4Address, network: IPv4Network | None = None) -> str | None:
    """Why ``ip`` cannot be a node's underlay address, or None when it can."""
    if ip.is_unspecified:
        return f"PublicIP {ip} is the unspecified address"
    if ip.is_loopback:
        return f"PublicIP {ip} is a loopback address"
    if ip.is_multicast:
        return f"PublicIP {ip} is a multicast address"
    if ip == IPv4Address("255.255.255.255"):
        return f"PublicIP {ip} is the broadcast address"
    if ip.is_reserved:
        return f"PublicIP {ip} is in the reserved range 240.0.0.0/4"
    if network is not None and ip in network:
        return f"PublicIP {ip} lies inside the Network {network} (an underlay address must not)"
    return None


def _vxlan_data(lease: Lease) -> str | None:
    try:
        data = lease.attrs.backend_data_obj()
    except ValueError:
        return "BackendData: not JSON"
    raw = data.get("VtepMAC", data.get("vtepmac"))
    if not isinstance(raw, str):
        return f"BackendData.VtepMAC: must be a MAC address string, got {raw!r}"
    try:
        mac = normalize_mac(raw)
    except ValueError:
        return f"BackendData.VtepMAC: not a MAC address: {raw[:40]!r}"
    if mac == "00:00:00:00:00:00":
        return "BackendData.VtepMAC: the all-zero MAC (the vxlan device's default destination)"
    if int(mac[:2], 16) & 1:
        return f"BackendData.VtepMAC: {mac} is a multicast/broadcast MAC"
    return None


# BackendType -> check of its BackendData; types not listed have nothing to check here.
_BACKEND_DATA_CHECKS: Mapping[str, Callable[[Lease], str | None]] = {"vxlan": _vxlan_data}


@dataclass(frozen=True)
class LeasePolicy:
    """The rules a peer's lease must pass; built once per network config."""

    network: IPv4Network
    subnet_len: int
    protected: frozenset[IPv4Address] = frozenset()

    @classmethod
    def build(cls, network: IPv4Network, subnet_len: int,
              protected: Iterable[Any] = ()) -> LeasePolicy:
        """``protected``: addresses (IPv4 ones are kept) no peer's subnet may cover."""
        return cls(network, subnet_len,
                   frozenset(a for a in protected if isinstance(a, IPv4Address)))

    def check(self, lease: Lease) -> tuple[RejectReason, str] | None:
        """(reason, detail) when ``lease`` must not be used, else None."""
        subnet = lease.subnet
        if not subnet.subnet_of(self.network):
            return RejectReason.OUTSIDE_NETWORK, f"subnet {subnet} lies outside the Network {self.network}"
        if subnet.prefixlen != self.subnet_len:
            return (RejectReason.WRONG_PREFIX_LENGTH,
                    f"subnet {subnet} is a /{subnet.prefixlen}, the Network's SubnetLen is "
                    f"{self.subnet_len}")
        problem = public_ip_problem(lease.attrs.public_ip, self.network)
        if problem is not None:
            return RejectReason.BAD_PUBLIC_IP, problem
        covered = covered_address(subnet, self.protected)
        if covered is not None:
            return (RejectReason.COVERS_UNDERLAY,
                    f"subnet {subnet} covers {covered}, an underlay or etcd address of this node")
        data_check = _BACKEND_DATA_CHECKS.get(lease.attrs.backend_type.lower())
        if data_check is not None:
            problem = data_check(lease)
            if problem is not None:
                return RejectReason.BAD_BACKEND_DATA, problem
        return None


def covered_address(subnet: IPv4Network, addresses: Iterable[IPv4Address]) -> IPv4Address | None:
    for address in addresses:
        if address in subnet:
            return address
    return None
