"""Which leases from etcd may reach a backend: one validation, pure, applied to every lease.

Why: anyone who can write one key under ``<prefix>/subnets/`` (a buggy tool, a compromised
node, a typo) used to be able to take a node's network down.  A lease for ``198.18.0.0/25``
(outside the Network) made every vxlan node route its own underlay into flannel.1; a ``/25``
inside a node's ``/24`` hijacked half of it; ``PublicIP`` 0.0.0.0 became an fdb entry.  Go
flannel (v0.20.2) accepts all of these.  Here a lease is accepted only when:

- its subnet lies inside Network and has prefix SubnetLen (so two subnets that pass are either
  equal or disjoint; two keys naming the same subnet, e.g. ``10.5.1.0-24`` and
  ``10.5.1.0-24&fc00::-64``, or the same IPv6 half with different IPv4 halves, are settled by
  the lease book: the key created first wins);
- its PublicIP is a usable unicast address (not unspecified, loopback, multicast, broadcast
  or reserved) outside the Network (an underlay address inside the overlay would loop);
- its subnet covers none of the protected addresses: the node's own underlay addresses and
  the etcd endpoints' addresses (matters when a Network was configured over the underlay);
- its backend data is usable for its BackendType (vxlan: ``VtepMAC`` a unicast MAC that is not
  all zeros: an all-zero fdb entry is the device's default destination; wireguard:
  ``PublicKey`` 32 bytes of base64, not all zeros, and ``Port`` absent or 0..65535).

In a dual-stack network (the policy built with an IPv6Network) a lease's IPv6 half, when it
has one (``Lease.ipv6_subnet``), passes the same rules: the subnet inside IPv6Network with
prefix IPv6SubnetLen; ``PublicIPv6`` set, a global unicast (2000::/3) or unique local
(fc00::/7) address outside IPv6Network (never ::, loopback, multicast, link-local, site-local
or IPv4-mapped); the subnet covering no protected IPv6 address; for vxlan a usable
``BackendV6Data.VtepMAC``, for wireguard a usable ``BackendV6Data`` when there is one.  A
bad IPv6 half refuses the whole lease (the reasons are the IPv4 half's, the detail says "IPv6
half").  A lease without an IPv6 half is an IPv4-only node of a mixed cluster: judged on its
IPv4 half.  In an IPv4-only network the IPv6 half is not
looked at (nothing routes it).

Each refusal is a :class:`Rejection` with a reason (a closed set, also the metric label) and
a detail that names the field.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flanneld.lease import Lease, backend_data_object, key_name
from flanneld.netops import normalize_mac
from flanneld.subnets import within


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


_GLOBAL_UNICAST6 = IPv6Network("2000::/3")
_UNIQUE_LOCAL6 = IPv6Network("fc00::/7")
_SITE_LOCAL6 = IPv6Network("fec0::/10")


def public_ipv6_problem(ip: IPv6Address, network: IPv6Network | None = None) -> str | None:
    """Why ``ip`` cannot be a node's underlay IPv6 address (PublicIPv6), or None when it can:
    it must be a global unicast (2000::/3) or unique local (fc00::/7) address."""
    if ip.is_unspecified:
        return f"PublicIPv6 {ip} is the unspecified address"
    if ip.is_loopback:
        return f"PublicIPv6 {ip} is the loopback address"
    if ip.is_multicast:
        return f"PublicIPv6 {ip} is a multicast address"
    if ip.is_link_local:
        return f"PublicIPv6 {ip} is a link-local address (fe80::/10: not routable between nodes)"
    if ip.ipv4_mapped is not None:
        return f"PublicIPv6 {ip} is an IPv4-mapped address (::ffff:0:0/96)"
    if ip in _SITE_LOCAL6:
        return f"PublicIPv6 {ip} is a deprecated site-local address (fec0::/10)"
    if ip not in _GLOBAL_UNICAST6 and ip not in _UNIQUE_LOCAL6:
        return (f"PublicIPv6 {ip} is neither a global unicast (2000::/3) nor a unique local "
                "(fc00::/7) address")
    if network is not None and ip in network:
        return (f"PublicIPv6 {ip} lies inside the IPv6Network {network} (an underlay address "
                "must not)")
    return None


def _vtep_mac_problem(text: str, field_name: str) -> str | None:
    try:
        data = backend_data_object(text)
    except ValueError:
        return f"{field_name}: not JSON"
    raw = data.get("VtepMAC", data.get("vtepmac"))
    if not isinstance(raw, str):
        return f"{field_name}.VtepMAC: must be a MAC address string, got {raw!r}"
    try:
        mac = normalize_mac(raw)
    except ValueError:
        return f"{field_name}.VtepMAC: not a MAC address: {raw[:40]!r}"
    if mac == "00:00:00:00:00:00":
        return f"{field_name}.VtepMAC: the all-zero MAC (the vxlan device's default destination)"
    if int(mac[:2], 16) & 1:
        return f"{field_name}.VtepMAC: {mac} is a multicast/broadcast MAC"
    return None


def _vxlan_data(lease: Lease) -> str | None:
    return _vtep_mac_problem(lease.attrs.backend_data, "BackendData")


def _vxlan_v6_data(lease: Lease) -> str | None:
    return _vtep_mac_problem(lease.attrs.backend_v6_data, "BackendV6Data")


def _wireguard_problem(text: str, field_name: str) -> str | None:
    """``{"PublicKey": <44 base64 characters, 32 bytes>, "Port": <0..65535, optional>}``; a
    missing or 0 Port (older Go nodes) means the listen port of our own device."""
    try:
        data = backend_data_object(text)
    except ValueError:
        return f"{field_name}: not JSON"
    raw = data.get("PublicKey", data.get("publickey"))
    if not isinstance(raw, str):
        return f"{field_name}.PublicKey: must be a base64 WireGuard key string, got {raw!r:.60}"
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return f"{field_name}.PublicKey: not base64: {raw[:60]!r}"
    if len(key) != 32:
        return f"{field_name}.PublicKey: decodes to {len(key)} bytes, a WireGuard key is 32"
    if key == bytes(32):
        return f"{field_name}.PublicKey: the all-zero key"
    port = data.get("Port", data.get("port", 0))
    if port is None:
        port = 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return f"{field_name}.Port: must be an integer 0..65535, got {port!r:.40}"
    return None


def _wireguard_data(lease: Lease) -> str | None:
    return _wireguard_problem(lease.attrs.backend_data, "BackendData")


def _wireguard_v6_data(lease: Lease) -> str | None:
    if not lease.attrs.backend_v6_data:  # single-device modes: the IPv4 half's data serves
        return None
    return _wireguard_problem(lease.attrs.backend_v6_data, "BackendV6Data")


# BackendType -> check of its BackendData (and of its BackendV6Data, for the IPv6 half); types
# not listed have nothing to check here.
_BACKEND_DATA_CHECKS: Mapping[str, Callable[[Lease], str | None]] = {
    "vxlan": _vxlan_data, "wireguard": _wireguard_data}
_BACKEND_V6_DATA_CHECKS: Mapping[str, Callable[[Lease], str | None]] = {
    "vxlan": _vxlan_v6_data, "wireguard": _wireguard_v6_data}


@dataclass(frozen=True)
class LeasePolicy:
    """The rules a peer's lease must pass; built once per network config."""

    network: IPv4Network
    subnet_len: int
    protected: frozenset[IPv4Address] = frozenset()
    # Dual stack: the IPv6 half's rules apply only with an IPv6Network.
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    protected6: frozenset[IPv6Address] = frozenset()

    @classmethod
    def build(cls, network: IPv4Network, subnet_len: int, protected: Iterable[Any] = (),
              ipv6_network: IPv6Network | None = None,
              ipv6_subnet_len: int = 0) -> LeasePolicy:
        """``protected``: addresses (IPv4 and IPv6 ones are kept) no peer's subnet may cover.
        ``ipv6_network``/``ipv6_subnet_len``: the network config's IPv6Network and
        IPv6SubnetLen (None/0 for an IPv4-only network: IPv6 halves are not judged)."""
        if ipv6_network is not None and not 0 < ipv6_subnet_len <= 128:
            raise ValueError(f"an IPv6Network ({ipv6_network}) needs an IPv6SubnetLen, "
                             f"got {ipv6_subnet_len}")
        addresses = tuple(protected)
        return cls(network, subnet_len,
                   frozenset(a for a in addresses if isinstance(a, IPv4Address)),
                   ipv6_network, ipv6_subnet_len if ipv6_network is not None else 0,
                   frozenset(a for a in addresses if isinstance(a, IPv6Address)))

    @property
    def dual_stack(self) -> bool:
        """True when IPv6 halves are judged (and compete: see the lease book)."""
        return self.ipv6_network is not None

    def check(self, lease: Lease) -> tuple[RejectReason, str] | None:
        """(reason, detail) when ``lease`` must not be used, else None."""
        subnet = lease.subnet
        if not within(subnet, self.network):
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
        btype = lease.attrs.backend_type.lower()
        data_check = _BACKEND_DATA_CHECKS.get(btype)
        if data_check is not None:
            problem = data_check(lease)
            if problem is not None:
                return RejectReason.BAD_BACKEND_DATA, problem
        if self.ipv6_network is not None and lease.ipv6_subnet is not None:
            return self._check_ipv6_half(lease, self.ipv6_network, btype)
        return None

    def _check_ipv6_half(self, lease: Lease, network: IPv6Network,
                         btype: str) -> tuple[RejectReason, str] | None:
        subnet = lease.ipv6_subnet
        assert subnet is not None
        half = "IPv6 half: "
        if not within(subnet, network):
            return (RejectReason.OUTSIDE_NETWORK,
                    f"{half}subnet {subnet} lies outside the IPv6Network {network}")
        if subnet.prefixlen != self.ipv6_subnet_len:
            return (RejectReason.WRONG_PREFIX_LENGTH,
                    f"{half}subnet {subnet} is a /{subnet.prefixlen}, the network's "
                    f"IPv6SubnetLen is {self.ipv6_subnet_len}")
        public = lease.attrs.public_ipv6
        if public is None:
            return (RejectReason.BAD_PUBLIC_IP,
                    f"{half}PublicIPv6 is not set (a lease with an IPv6 subnet needs one)")
        problem = public_ipv6_problem(public, network)
        if problem is not None:
            return RejectReason.BAD_PUBLIC_IP, half + problem
        covered = covered_address(subnet, self.protected6)
        if covered is not None:
            return (RejectReason.COVERS_UNDERLAY,
                    f"{half}subnet {subnet} covers {covered}, an underlay or etcd address of "
                    "this node")
        data_check = _BACKEND_V6_DATA_CHECKS.get(btype)
        if data_check is not None:
            problem = data_check(lease)
            if problem is not None:
                return RejectReason.BAD_BACKEND_DATA, half + problem
        return None


def covered_address(subnet: IPv4Network | IPv6Network,
                    addresses: Iterable[IPv4Address | IPv6Address],
                    ) -> IPv4Address | IPv6Address | None:
    """The first of ``addresses`` inside ``subnet`` (an address of the other family never is)."""
    for address in addresses:
        if address in subnet:
            return address
    return None
