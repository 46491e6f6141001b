"""wireguard-go's cross-platform UAPI text protocol, as pure functions over text.

The protocol (https://www.wireguard.com/xplatform/, wireguard-go ``device/uapi.go``): a request
is ``set=1`` or ``get=1`` on a line of its own, ``key=value`` lines, and an empty line; the
answer of either is the ``key=value`` lines of the device (for a get) and ``errno=N`` followed
by an empty line.  Keys are lowercase hex.  Nothing here opens the socket
(``/var/run/wireguard/<dev>.sock``): ``userspace.UserspaceDriver`` owns it.

What wireguard-go requires of a set request, and why the lines come in this order:

- device keys (``private_key``, ``listen_port``, ``replace_peers``) come first: the first
  ``public_key`` line starts the peer sections and a device key after it is an error;
  ``replace_peers=true`` removes the peers as soon as it is read, so it precedes them;
- each ``public_key`` starts a peer; ``remove=true`` removes it (nothing else is sent for it);
  ``preshared_key`` of 64 zeros clears the key (an all-zero key is "none" to WireGuard);
  ``replace_allowed_ips=true`` must precede the peer's ``allowed_ip`` lines, which it clears;
- wireguard-go stops reading at the first line it refuses and answers ``errno=-22`` (its errno
  values are negative), leaving the rest of the request unread: the connection is not usable
  for another request after an error.

No private or preshared key ever appears in an error message or a ``repr``; values of other
keys are quoted (shortened) where that helps to find the fault.
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address, IPv6Address, ip_network

from flanneld.backends.wireguard.driver import WireguardDriverError
from flanneld.backends.wireguard.keys import KEY_LEN, BadKeyError, Key
from flanneld.backends.wireguard.model import (
    DeviceConfig,
    DeviceState,
    Endpoint,
    PeerConfig,
    PeerDraft,
)
from flanneld.netops import IPAddress, IPNetwork

_ZERO_KEY_HEX = "0" * (2 * KEY_LEN)
_UINT = re.compile(r"[0-9]{1,20}")
_INT = re.compile(r"-?[0-9]{1,20}")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_PREFIX = re.compile(r"[^/]+/[0-9]{1,3}")


class UapiError(WireguardDriverError):
    """A refused request (``errno`` set: its positive value) or a malformed answer (``errno``
    None).  The message never includes key material."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# --- requests -------------------------------------------------------------------------------

def encode_get() -> bytes:
    """The get request."""
    return b"get=1\n\n"


def encode_set(config: DeviceConfig) -> bytes:
    """The whole set request for ``config``: ``set=1``, the device's lines, each peer's lines,
    and the empty line that ends it (UapiError for a value out of range)."""
    lines = ["set=1"]
    if config.private_key is not None:
        lines.append(f"private_key={config.private_key.hex()}")
    if config.listen_port is not None:
        lines.append(f"listen_port={_u16(config.listen_port, 'listen_port')}")
    if config.replace_peers:
        lines.append("replace_peers=true")
    for peer in config.peers:
        lines.extend(_peer_lines(peer))
    lines.append("")
    text = "\n".join(lines) + "\n"
    return text.encode("ascii")


def _peer_lines(peer: PeerConfig) -> list[str]:
    lines = [f"public_key={peer.public_key.hex()}"]
    if peer.remove:
        lines.append("remove=true")
        return lines
    what = f"peer {peer.public_key.base64()}"
    psk = peer.preshared_key.hex() if peer.preshared_key is not None else _ZERO_KEY_HEX
    lines.append(f"preshared_key={psk}")
    if peer.endpoint is not None:
        _u16(peer.endpoint.port, f"{what}: endpoint port")
        endpoint = str(peer.endpoint)
        if not endpoint.isprintable():  # an IPv6 scope can be any text: keep lines whole
            raise UapiError(f"{what}: the endpoint's scope is not printable")
        lines.append(f"endpoint={endpoint}")
    lines.append(
        f"persistent_keepalive_interval={_u16(peer.keepalive, f'{what}: keepalive')}")
    if peer.replace_allowed_ips:
        lines.append("replace_allowed_ips=true")
    lines.extend(f"allowed_ip={net}" for net in peer.allowed_ips)
    return lines


def _u16(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise UapiError(f"{what} {value!r} is not in 0..65535")
    return value


# --- answers --------------------------------------------------------------------------------


def parse_get(text: str) -> DeviceState:
    """The device state of a get answer (``key=value`` lines up to ``errno=0``).

    UapiError: ``errno`` not 0 (with its errno), or a malformed answer.  Unknown keys are
    skipped (newer or forked wireguard-go versions add some); the private key is only used to
    derive the public key, never kept."""
    pairs = _answer_lines(text, "get")
    public_key: Key | None = None
    listen_port = 0
    peers: list[PeerDraft] = []
    peer: PeerDraft | None = None
    for lineno, key, value in pairs:
        if key == "public_key":
            peer = PeerDraft(_key(lineno, key, value))
            peers.append(peer)
        elif peer is None:  # device section
            if key == "private_key":
                private = _key(lineno, key, value)
                public_key = None if _is_zero(private) else _public_of(lineno, private)
            elif key == "listen_port":
                listen_port = _uint(lineno, key, value, 0xFFFF)
        elif key == "preshared_key":
            peer.has_preshared_key = not _is_zero(_key(lineno, key, value))
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value, f"line {lineno}: endpoint")
        elif key == "persistent_keepalive_interval":
            peer.keepalive = _uint(lineno, key, value, 0xFFFF)
        elif key == "allowed_ip":
            peer.allowed_ips.append(_network(lineno, value))
        elif key == "last_handshake_time_sec":
            peer.handshake_sec = _uint(lineno, key, value)
        elif key == "last_handshake_time_nsec":
            peer.handshake_nsec = _uint(lineno, key, value, 999_999_999)
        elif key == "rx_bytes":
            peer.rx_bytes = _uint(lineno, key, value)
        elif key == "tx_bytes":
            peer.tx_bytes = _uint(lineno, key, value)
    return DeviceState(public_key=public_key, listen_port=listen_port,
                       peers=tuple(p.state() for p in peers))


def parse_set_response(text: str) -> None:
    """Check the answer of a set (``errno=0`` and an empty line); UapiError otherwise."""
    pairs = _answer_lines(text, "set")
    if pairs:
        raise UapiError(f"line {pairs[0][0]} of the answer to a set is not errno=N")


def parse_endpoint(text: str, what: str = "endpoint") -> Endpoint:
    """``1.2.3.4:51820`` or ``[2001:db8::1]:51820`` (as wireguard-go writes it)."""
    host, sep, port = text.rpartition(":")
    address: IPAddress | None = None
    if sep and _UINT.fullmatch(port) and int(port) <= 0xFFFF:
        try:
            if host.startswith("[") and host.endswith("]"):
                address = IPv6Address(host[1:-1])
            elif "[" not in host and ":" not in host:
                address = IPv4Address(host)
        except ValueError:
            address = None
    if address is None:
        raise UapiError(f"{what} {_quote(text)} is not address:port "
                        "(1.2.3.4:51820 or [2001:db8::1]:51820)")
    return Endpoint(address, int(port))


def _answer_lines(text: str, op: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) of the lines before ``errno=``, after checking the errno."""
    pairs: list[tuple[int, str, str]] = []
    lines = text.split("\n")
    if not lines[-1]:
        lines.pop()  # what follows the last newline
    for lineno, line in enumerate(lines, start=1):
        if not line:
            raise UapiError(f"the answer to a {op} ended (line {lineno}) before its errno line")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise UapiError(f"line {lineno} of the answer to a {op} is not key=value")
        if key == "errno":
            if not _INT.fullmatch(value):
                raise UapiError(f"line {lineno}: errno {_quote(value)} is not a number")
            code = abs(int(value))  # wireguard-go writes -EINVAL etc.
            if code:
                raise UapiError(f"wireguard-go refused the {op}: errno {code} "
                                f"({os.strerror(code)})", errno=code)
            return pairs
        pairs.append((lineno, key, value))
    raise UapiError(f"the answer to a {op} has no errno line (cut short?)")


def _key(lineno: int, key: str, value: str) -> Key:
    if not _HEX_KEY.fullmatch(value):
        raise UapiError(f"line {lineno}: {key} is not a {2 * KEY_LEN}-digit hex key")
    return Key(bytes.fromhex(value))


def _is_zero(key: Key) -> bool:
    return not any(key.raw)


def _public_of(lineno: int, private: Key) -> Key:
    try:
        return private.public()
    except (BadKeyError, ValueError):
        raise UapiError(f"line {lineno}: private_key is not a usable X25519 key") from None


def _uint(lineno: int, key: str, value: str, maximum: int = (1 << 64) - 1) -> int:
    if not _UINT.fullmatch(value) or int(value) > maximum:
        raise UapiError(f"line {lineno}: {key} {_quote(value)} is not a number in 0..{maximum}")
    return int(value)


def _network(lineno: int, value: str) -> IPNetwork:
    try:
        if not _PREFIX.fullmatch(value):  # ip_network takes "10.0.0.1" as a /32 and netmasks
            raise ValueError(value)
        return ip_network(value, strict=False)
    except ValueError:
        raise UapiError(f"line {lineno}: allowed_ip {_quote(value)} is not a network "
                        "(address/prefix length)") from None


def _quote(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
