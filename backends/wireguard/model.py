"""What a WireGuard device is told and what it reports, for both drivers alike.

The userspace driver (wireguard-go) speaks these over its UAPI text protocol (``uapi``), the
kernel driver over WireGuard's generic netlink family (``genl``); the backend's network plans in
these terms only.  Keys are raw 32-byte values (``keys.Key``); a private key or a preshared key
never appears in ``repr`` (these objects end up in logs and test output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flanneld.backends.wireguard.keys import Key
from flanneld.netops import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A peer's UDP endpoint: ``1.2.3.4:51820`` or ``[2001:db8::1]:51821``."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One peer to add, change or remove (``remove``: only ``public_key`` matters).

    ``allowed_ips`` replace the peer's current list (``replace_allowed_ips``); ``preshared_key``
    None clears it; ``keepalive`` 0 turns persistent keepalive off."""

    public_key: Key
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    preshared_key: Key | None = field(default=None, repr=False)
    keepalive: int = 0
    remove: bool = False
    replace_allowed_ips: bool = True


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One configuration request: device settings (None: leave as is) and peer changes.

    ``replace_peers`` drops every peer not listed (flannel only uses it when it creates a
    device)."""

    private_key: Key | None = field(default=None, repr=False)
    listen_port: int | None = None
    replace_peers: bool = False
    peers: Sequence[PeerConfig] = ()


@dataclass(frozen=True, slots=True)
class PeerState:
    """A peer as the device reports it."""

    public_key: Key
    endpoint: Endpoint | None
    allowed_ips: tuple[IPNetwork, ...]
    has_preshared_key: bool
    keepalive: int
    last_handshake: float  # unix time with fraction; 0.0: never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The device as it reports itself (its private key only as "has one")."""

    public_key: Key | None
    listen_port: int
    peers: tuple[PeerState, ...]


@dataclass(slots=True)
class PeerDraft:
    """A peer being read from a device's answer (either protocol), field by field."""

    public_key: Key
    endpoint: Endpoint | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    has_preshared_key: bool = False
    keepalive: int = 0
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def state(self) -> PeerState:
        handshake = 0.0
        if self.handshake_sec or self.handshake_nsec:
            handshake = self.handshake_sec + self.handshake_nsec / 1e9
        return PeerState(
            public_key=self.public_key, endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips), has_preshared_key=self.has_preshared_key,
            keepalive=self.keepalive, last_handshake=handshake, rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes)
