"""Pure planning of a WireGuard device's peers: a lease -> its peer, and desired vs observed.

A device carries one family (``separate`` mode: ``flannel-wg`` IPv4, ``flannel-wg-v6`` IPv6) or
both (``auto`` / ``ipv4`` / ``ipv6``: ``flannel-wg`` alone).  A peer lease gives, for a device:

- the public key: ``BackendData.PublicKey`` (the IPv6 device: ``BackendV6Data``'s; a single
  device takes the IPv4 half's, else the IPv6 half's);
- the endpoint: the half's public address and the ``Port`` of that half's data; a missing or 0
  ``Port`` (Go nodes before it was published) means our own device's listen port;
- the allowed IPs: the lease's subnets of the families the device carries.

In a single-device mode the endpoint family is the mode's (``ipv4``, ``ipv6``) or, for
``auto``, Go's choice (``select_family``): IPv4, unless the peer has a PublicIPv6 and its
IPv4 address (or ours) is private while both IPv6 addresses are not.

One public key is one peer on a device: a second lease naming a key that an earlier lease holds
(a copied key file, or a hostile lease) is not programmed, and said so; the key's holder keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flanneld.backends.family import V4, V6, Half
from flanneld.backends.wireguard.keys import BadKeyError, Key
from flanneld.backends.wireguard.model import Endpoint, PeerConfig, PeerState
from flanneld.lease import Lease, backend_data_object
from flanneld.netops import IPNetwork

_GO_PRIVATE4 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"),
                IPv4Network("192.168.0.0/16"))
_GO_PRIVATE6 = IPv6Network("fc00::/7")


@dataclass(frozen=True)
class DeviceSpec:
    """What a device is: its name, listen port, the halves it carries, and the peer settings
    every peer of it shares."""

    name: str
    port: int
    halves: tuple[Half, ...]
    mode: str = "separate"
    keepalive: int = 0
    psk: Key | None = None
    # Single-device ``auto``: whether this node has a usable (non-private) address of each
    # family, for Go's endpoint choice.
    have_public4: bool = True
    have_public6: bool = False

    def __repr__(self) -> str:  # the PSK never shows
        return f"DeviceSpec({self.name!r}, port={self.port}, halves={[h.name for h in self.halves]})"


def go_private(ip: IPv4Address | IPv6Address) -> bool:
    """Go's ``ip.IsPrivate``: RFC 1918 for IPv4, fc00::/7 for IPv6 (198.18.0.0/15 is not)."""
    if isinstance(ip, IPv4Address):
        return any(ip in n for n in _GO_PRIVATE4)
    return ip in _GO_PRIVATE6


def select_family(device: DeviceSpec, lease: Lease) -> Half:
    """The family of a peer's endpoint on a single device (Go's ``selectMode``)."""
    if device.mode == "ipv4":
        return V4
    if device.mode == "ipv6":
        return V6
    ip6 = lease.attrs.public_ipv6
    if ip6 is None:
        return V4
    if not go_private(lease.attrs.public_ip) and device.have_public4:
        return V4
    if not go_private(ip6) and device.have_public6:
        return V6
    return V4


def _data(text: str) -> dict[str, object]:
    """Backend data with lower-case keys (Go's decoder matches fields case-insensitively);
    {} when it is not a JSON object (the lease policy refused such a lease already)."""
    try:
        return {k.lower(): v for k, v in backend_data_object(text).items()}
    except ValueError:
        return {}


def _key_and_port(text: str) -> tuple[Key | None, int]:
    data = _data(text)
    raw, port = data.get("publickey"), data.get("port")
    key = None
    if isinstance(raw, str):
        try:
            key = Key.from_base64(raw)
        except BadKeyError:
            key = None
    ok_port = isinstance(port, int) and not isinstance(port, bool) and 0 < port <= 65535
    return key, port if ok_port and isinstance(port, int) else 0


def peer_config(device: DeviceSpec, lease: Lease) -> PeerConfig | None:
    """The peer a lease makes on ``device``; None when the lease has nothing for it (no half
    the device carries, no endpoint address of the chosen family, no usable key)."""
    subnets: list[IPNetwork] = []
    for half in device.halves:
        subnet = half.subnet(lease)
        if subnet is not None:
            subnets.append(subnet)
    if not subnets:
        return None
    if len(device.halves) == 1:
        family = device.halves[0]
        key, port = _key_and_port(family.backend_data(lease.attrs))
    else:
        family = select_family(device, lease)
        key, port = _key_and_port(lease.attrs.backend_data)
        v6_key, v6_port = _key_and_port(lease.attrs.backend_v6_data)
        if key is None:
            key = v6_key
        if family.v6 and v6_port:
            port = v6_port
    address = family.public_ip(lease.attrs)
    if key is None or address is None:
        return None
    return PeerConfig(public_key=key, endpoint=Endpoint(address, port or device.port),
                      allowed_ips=tuple(subnets), preshared_key=device.psk,
                      keepalive=device.keepalive)


def removal(key: Key) -> PeerConfig:
    return PeerConfig(public_key=key, remove=True)


def matches(want: PeerConfig, have: PeerState) -> bool:
    """Whether the device already has ``want`` (allowed IPs as a set; the PSK by presence:
    a device never tells the key itself)."""
    return (have.endpoint == want.endpoint and set(have.allowed_ips) == set(want.allowed_ips)
            and have.keepalive == want.keepalive
            and have.has_preshared_key == (want.preshared_key is not None))


def desired_peers(device: DeviceSpec, own: Key, leases: Iterable[Lease],
                  ) -> tuple[dict[Key, tuple[Lease, PeerConfig]], list[tuple[Lease, str]]]:
    """Every peer the leases make on ``device``, by public key, with the lease that holds
    the key; and the leases left out with why (a key held by an earlier lease, or ours).
    ``leases`` come in the lease book's order (first holder first)."""
    out: dict[Key, tuple[Lease, PeerConfig]] = {}
    refused: list[tuple[Lease, str]] = []
    for lease in leases:
        peer = peer_config(device, lease)
        if peer is None:
            continue
        problem = key_problem(peer.public_key, own, out.get(peer.public_key), lease.subnet)
        if problem is not None:
            refused.append((lease, problem))
            continue
        out[peer.public_key] = (lease, peer)
    return out, refused


def key_problem(key: Key, own: Key, holder: tuple[Lease, PeerConfig] | None,
                subnet: IPv4Network) -> str | None:
    """Why a lease of ``subnet`` may not be the peer of ``key`` (None: it may)."""
    if key == own:
        return "its PublicKey is this node's own"
    if holder is not None and holder[0].subnet != subnet:
        return f"its PublicKey is already the peer of {holder[0].subnet}"
    return None


def plan(desired: Mapping[Key, tuple[Lease, PeerConfig]],
         observed: Sequence[PeerState]) -> list[PeerConfig]:
    """The peer changes that make the device hold exactly ``desired``: removals of every
    peer not wanted (the device is flannel's), then additions and changes."""
    have = {p.public_key: p for p in observed}
    ops = [removal(key) for key in have if key not in desired]
    for key, (_, want) in desired.items():
        state = have.get(key)
        if state is None or not matches(want, state):
            ops.append(want)
    return ops
