"""Keys and peer changes shared by the WireGuard codec tests (UAPI text, generic netlink)."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

from flanneld.backends.wireguard.keys import Key
from flanneld.backends.wireguard.model import Endpoint, PeerConfig

# RFC 7748 section 6.1: Alice's private key and its public key; Bob's public key.
DEVICE_KEY = Key.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
DEVICE_PUBLIC = Key.from_hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
PEER_A = Key.from_hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
PEER_B = Key(bytes(range(1, 33)))
PEER_C = Key(bytes(range(0x40, 0x60)))
PSK = Key(bytes(range(0x80, 0xA0)))

ADD_V4 = PeerConfig(PEER_A, Endpoint(A("198.18.0.2"), 51820), (N("10.244.2.0/24"),),
                    preshared_key=PSK, keepalive=25)
ADD_V6 = PeerConfig(PEER_B, Endpoint(A6("2001:db8:18::2"), 51821),
                    (N6("fd00:244:2::/64"), N("10.244.3.0/24")))
CHANGE = PeerConfig(PEER_A, Endpoint(A("198.18.0.3"), 51820),
                    (N("10.244.2.0/24"), N("10.244.20.0/24")), replace_allowed_ips=False)
REMOVE = PeerConfig(PEER_B, remove=True)
