"""WireGuard's generic netlink family (the kernel driver), as pure functions over bytes.

Layouts from Linux ``include/uapi/linux/wireguard.h`` and ``drivers/net/wireguard/netlink.c``;
nothing here opens a socket (``kernel.KernelDriver`` does).  Every request is one whole
netlink message: ``nlmsghdr`` (NLM_F_REQUEST|NLM_F_ACK, and NLM_F_DUMP for the get, as ``wg``
sends them), ``genlmsghdr`` (command, version 1) and the attributes.

What the kernel requires, and why the bytes are what they are:

- The family's id is dynamic: ask the controller (``encode_getfamily`` /
  ``parse_family_id``) once per socket.
- Attributes are validated strictly: every nest carries NLA_F_NESTED; the list elements
  (peers, allowed IPs) are nests of type 0, as the kernel writes them and ``wg`` sends them
  (the kernel ignores their type; wgctrl-go numbers them by index, pyroute2 from 1).
- ``WGPEER_A_ENDPOINT`` is a ``struct sockaddr_in`` (16 bytes) or ``sockaddr_in6`` (28
  bytes) exactly: of any other length the kernel silently ignores it.
- A peer's preshared key is always sent (32 zero bytes clear it) and so is its keepalive (0:
  off), so a request states the whole peer; WGPEER_F_REPLACE_ALLOWEDIPS makes its allowed IPs
  the listed ones.  Removing a peer that is not there is not an error.
- A get is a dump: the device's attributes come in the first message only, and the kernel
  cuts the peer list where a message is full, possibly inside a peer, whose next part
  (public key and more allowed IPs only) starts the next message.  ``parse_get`` merges them.
- A large set is better split (``encode_set_chunks``): the device's attributes (and
  WGDEVICE_F_REPLACE_PEERS) in the first message only, a peer too big for one message is
  continued in the next with its public key and the rest of its allowed IPs (without
  WGPEER_F_REPLACE_ALLOWEDIPS, which would drop the ones already set), as ``wg`` does.

A private or preshared key never appears in an error message.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_network

from flanneld import netlink_codec as codec
from flanneld.backends.wireguard.driver import WireguardDriverError
from flanneld.backends.wireguard.keys import KEY_LEN, Key
from flanneld.backends.wireguard.model import (
    DeviceConfig,
    DeviceState,
    Endpoint,
    PeerConfig,
    PeerDraft,
)
from flanneld.netops import AF_INET, AF_INET6, IPAddress, IPNetwork

# --- constants (linux/genetlink.h, linux/wireguard.h) ---------------------------------------
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLMSG_MIN_TYPE = 0x10
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
IFNAMSIZ = 16

WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1

WGDEVICE_A_IFINDEX = 1
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_PRIVATE_KEY = 3
WGDEVICE_A_PUBLIC_KEY = 4
WGDEVICE_A_FLAGS = 5
WGDEVICE_A_LISTEN_PORT = 6
WGDEVICE_A_FWMARK = 7
WGDEVICE_A_PEERS = 8
WGDEVICE_F_REPLACE_PEERS = 1

WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_PRESHARED_KEY = 2
WGPEER_A_FLAGS = 3
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGPEER_A_PROTOCOL_VERSION = 10
WGPEER_F_REMOVE_ME = 1
WGPEER_F_REPLACE_ALLOWEDIPS = 2
WGPEER_F_UPDATE_ONLY = 4

WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3

# What encode_set_chunks keeps each message under by default (the kernel takes more; a
# socket's default send buffer is ~200 KiB, but smaller messages keep the acks prompt).
MAX_MESSAGE = 32 * 1024
_MIN_MESSAGE = 512  # room for the headers, the device's attributes and one whole peer
_MAX_LIMIT = 0xFFFF  # the peers go in one attribute, whose length is 16 bits

GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_TIMESPEC = struct.Struct("=qq")  # struct __kernel_timespec
_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network order), addr
_SOCKADDR_IN6 = struct.Struct("=H2s4s16sI")  # family, port, flowinfo, addr, scope_id
_ZERO_KEY = bytes(KEY_LEN)
_ATTR_NAMES = {
    WGPEER_A_PUBLIC_KEY: "public key", WGPEER_A_PRESHARED_KEY: "preshared key",
    WGPEER_A_ENDPOINT: "endpoint", WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: "keepalive",
    WGPEER_A_LAST_HANDSHAKE_TIME: "last handshake time", WGPEER_A_RX_BYTES: "rx bytes",
    WGPEER_A_TX_BYTES: "tx bytes",
}


class GenlError(WireguardDriverError):
    """The kernel refused a request (``errno`` set, positive) or sent what we cannot read
    (``errno`` None); also a config that cannot be encoded.  No key material in messages."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# --- attribute helpers ----------------------------------------------------------------------

def _nla(atype: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    if length > 0xFFFF:  # nla_len is 16 bits
        raise GenlError(f"a netlink attribute of {length} bytes is over 64 KiB: split the "
                        "configuration (encode_set_chunks)")
    return _NLA.pack(length, atype) + payload + b"\0" * (-length % 4)


def _nest(atype: int, payload: bytes) -> bytes:
    return _nla(atype | NLA_F_NESTED, payload)


def _attr_list(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) of each attribute from ``offset``, in order (list
    elements share a type); GenlError for a truncated one."""
    while offset < len(data):
        if offset + _NLA.size > len(data):
            raise GenlError("a netlink attribute is cut short")
        alen, atype = _NLA.unpack_from(data, offset)
        if alen < _NLA.size or offset + alen > len(data):
            raise GenlError(f"a netlink attribute (type {atype & NLA_TYPE_MASK}) has a bad length")
        yield atype & NLA_TYPE_MASK, data[offset + _NLA.size: offset + alen]
        offset += (alen + 3) & ~3


def _ifname(ifname: str, atype: int = WGDEVICE_A_IFNAME) -> bytes:
    """The name attribute, NUL-terminated (the kernel's policy: NLA_NUL_STRING)."""
    raw = ifname.encode("utf-8", "replace")
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw or b"/" in raw or raw.isspace():
        raise GenlError(f"interface name {ifname!r} is not 1..{IFNAMSIZ - 1} bytes")
    return _nla(atype, raw + b"\0")


def _u16(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise GenlError(f"{what} {value!r} is not in 0..65535")
    return _U16.pack(value)


def _genl(cmd: int) -> bytes:
    return GENLMSGHDR.pack(cmd, WG_GENL_VERSION, 0)


def _refused(err: int, message: str, what: str) -> GenlError:
    detail = f" ({message})" if message else ""
    return GenlError(f"the kernel refused the {what}: {os.strerror(err)}{detail}", errno=err)


# --- the controller: the family's id ------------------------------------------------------

def encode_getfamily(seq: int) -> bytes:
    """CTRL_CMD_GETFAMILY for "wireguard" (answered by CTRL_CMD_NEWFAMILY and an ack)."""
    body = (GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1, 0)
            + _nla(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME.encode() + b"\0"))
    return codec.frame((GENL_ID_CTRL, 0, body), seq)


def parse_family_id(data: bytes) -> int:
    """The family id in the controller's answer; GenlError (errno ENOENT) when the kernel has
    no WireGuard (module not loaded or not built)."""
    for mtype, flags, _, body in codec.messages(data):
        if mtype == codec.NLMSG_ERROR:
            err, message = _error_of(body, flags)
            if err == errno_mod.ENOENT:
                raise GenlError("the kernel has no \"wireguard\" generic netlink family "
                                "(is the wireguard module loaded?)", errno=err)
            if err:
                raise _refused(err, message, "generic netlink family lookup")
            continue
        if mtype != GENL_ID_CTRL or len(body) < GENLMSGHDR.size:
            continue
        if body[0] != CTRL_CMD_NEWFAMILY:
            continue
        a = codec.attrs(body, GENLMSGHDR.size)
        name = a.get(CTRL_ATTR_FAMILY_NAME)
        if name is not None and name.split(b"\0", 1)[0] != WG_GENL_NAME.encode():
            continue
        family_id = a.get(CTRL_ATTR_FAMILY_ID)
        if family_id is None or len(family_id) < 2:
            raise GenlError("the controller's answer has no family id")
        return int(_U16.unpack_from(family_id)[0])
    raise GenlError("no generic netlink family in the controller's answer")


# --- acks -----------------------------------------------------------------------------------

def _error_of(body: bytes, flags: int) -> tuple[int, str]:
    if len(body) < 4:
        raise GenlError("an NLMSG_ERROR message is cut short")
    return codec.parse_error(body, flags)


def parse_ack_detail(data: bytes) -> tuple[int, str]:
    """(errno, the kernel's extended-ack text) of the NLMSG_ERROR in ``data``; errno 0: ack."""
    for mtype, flags, _, body in codec.messages(data):
        if mtype == codec.NLMSG_ERROR:
            return _error_of(body, flags)
    raise GenlError("no NLMSG_ERROR (ack) in the answer")


def parse_ack(data: bytes) -> int:
    """The errno of the ack in ``data`` (0: done)."""
    return parse_ack_detail(data)[0]


def check_ack(data: bytes, what: str = "WireGuard configuration") -> None:
    """GenlError with the kernel's reason unless ``data`` holds a positive ack."""
    err, message = parse_ack_detail(data)
    if err:
        raise _refused(err, message, what)


# --- set --------------------------------------------------------------------------------------

def _endpoint(endpoint: Endpoint, what: str) -> bytes:
    _u16(endpoint.port, f"{what}: endpoint port")
    be_port = struct.pack("!H", endpoint.port)
    address = endpoint.address
    if isinstance(address, IPv4Address):
        raw = _SOCKADDR_IN.pack(AF_INET, be_port, address.packed)
    else:
        scope = address.scope_id
        if scope is not None and not scope.isdigit():
            raise GenlError(f"{what}: the endpoint's scope must be an interface index")
        raw = _SOCKADDR_IN6.pack(AF_INET6, be_port, b"\0" * 4, address.packed,
                                 int(scope) if scope else 0)
    return _nla(WGPEER_A_ENDPOINT, raw)


def _allowed_ip(net: IPNetwork) -> bytes:
    family = AF_INET if net.version == 4 else AF_INET6
    return _nest(0, _nla(WGALLOWEDIP_A_FAMILY, _U16.pack(family))
                 + _nla(WGALLOWEDIP_A_IPADDR, net.network_address.packed)
                 + _nla(WGALLOWEDIP_A_CIDR_MASK, bytes([net.prefixlen])))


def _peer_head(peer: PeerConfig) -> bytes:
    """A peer's attributes but its allowed IPs (``wg``'s order)."""
    head = _nla(WGPEER_A_PUBLIC_KEY, peer.public_key.raw)
    if peer.remove:
        return head + _nla(WGPEER_A_FLAGS, _U32.pack(WGPEER_F_REMOVE_ME))
    what = f"peer {peer.public_key.base64()}"
    psk = peer.preshared_key.raw if peer.preshared_key is not None else _ZERO_KEY
    head += _nla(WGPEER_A_PRESHARED_KEY, psk)
    if peer.endpoint is not None:
        head += _endpoint(peer.endpoint, what)
    head += _nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, _u16(peer.keepalive, f"{what}: keepalive"))
    if peer.replace_allowed_ips:
        head += _nla(WGPEER_A_FLAGS, _U32.pack(WGPEER_F_REPLACE_ALLOWEDIPS))
    return head


def _peer_nest(head: bytes, allowed: Sequence[bytes]) -> bytes:
    payload = head
    if allowed:
        payload += _nest(WGPEER_A_ALLOWEDIPS, b"".join(allowed))
    return _nest(0, payload)


@dataclass(slots=True)
class _Builder:
    """The set messages' bodies, cut where one would exceed ``limit`` bytes on the wire."""

    name: bytes
    device: bytes
    limit: int | None
    bodies: list[bytes] = field(default_factory=list)
    peers: list[bytes] = field(default_factory=list)
    used: int = 0

    def __post_init__(self) -> None:
        self.used = self._base() + len(self.device)

    def _base(self) -> int:
        # nlmsghdr, genlmsghdr, ifname, the WGDEVICE_A_PEERS nest's header
        return codec.NLMSGHDR.size + GENLMSGHDR.size + len(self.name) + _NLA.size

    def fits(self, size: int) -> bool:
        return self.limit is None or self.used + size <= self.limit

    def room(self) -> int:
        assert self.limit is not None
        return self.limit - self.used

    def add(self, nest: bytes) -> None:
        self.peers.append(nest)
        self.used += len(nest)

    def flush(self) -> None:
        body = _genl(WG_CMD_SET_DEVICE) + self.name + self.device
        if self.peers:
            body += _nest(WGDEVICE_A_PEERS, b"".join(self.peers))
        self.bodies.append(body)
        self.device, self.peers = b"", []
        self.used = self._base()

    def peer(self, peer: PeerConfig) -> None:
        head = _peer_head(peer)
        allowed = [] if peer.remove else [_allowed_ip(net) for net in peer.allowed_ips]
        whole = _NLA.size + len(head) + (_NLA.size + sum(map(len, allowed)) if allowed else 0)
        if self.fits(whole):
            self.add(_peer_nest(head, allowed))
            return
        if self.peers:  # a peer goes whole into the next message when it fits there
            self.flush()
            if self.fits(whole):
                self.add(_peer_nest(head, allowed))
                return
        # Too big for any message: its allowed IPs go on in the next ones (public key only,
        # and no REPLACE_ALLOWEDIPS, which would drop those already set).
        rest = allowed
        while True:
            room = self.room() - 2 * _NLA.size - len(head)  # peer nest, allowed IPs nest
            count = 0
            while count < len(rest) and len(rest[count]) <= room:
                room -= len(rest[count])
                count += 1
            if count == 0:
                raise GenlError(f"a WireGuard message of {self.limit} bytes cannot hold a peer")
            self.add(_peer_nest(head, rest[:count]))
            rest = rest[count:]
            if not rest:
                return
            self.flush()
            head = _nla(WGPEER_A_PUBLIC_KEY, peer.public_key.raw)

    def finish(self) -> list[bytes]:
        if self.peers or not self.bodies:
            self.flush()
        return self.bodies


def _set_bodies(ifname: str, config: DeviceConfig, limit: int | None) -> list[bytes]:
    device = b""
    if config.private_key is not None:
        device += _nla(WGDEVICE_A_PRIVATE_KEY, config.private_key.raw)
    if config.listen_port is not None:
        device += _nla(WGDEVICE_A_LISTEN_PORT, _u16(config.listen_port, "listen port"))
    if config.replace_peers:
        device += _nla(WGDEVICE_A_FLAGS, _U32.pack(WGDEVICE_F_REPLACE_PEERS))
    builder = _Builder(_ifname(ifname), device, limit)
    for peer in config.peers:
        builder.peer(peer)
    return builder.finish()


def encode_set(family_id: int, seq: int, ifname: str, config: DeviceConfig) -> bytes:
    """WG_CMD_SET_DEVICE for the whole of ``config`` in one message; GenlError when its peers
    do not fit in one attribute (64 KiB: a few hundred peers): use ``encode_set_chunks``."""
    (body,) = _set_bodies(ifname, config, None)
    return codec.frame((family_id, 0, body), seq)


def encode_set_chunks(family_id: int, seq: int, ifname: str, config: DeviceConfig,
                      max_size: int = MAX_MESSAGE) -> list[bytes]:
    """``config`` as WG_CMD_SET_DEVICE messages of at most ``max_size`` bytes each, sequence
    numbers ``seq``, ``seq + 1``...; to be sent in order, each after the previous one's ack.
    The device's settings (and WGDEVICE_F_REPLACE_PEERS) are in the first one only."""
    if not _MIN_MESSAGE <= max_size <= _MAX_LIMIT:
        raise ValueError(f"max_size {max_size} is not in {_MIN_MESSAGE}..{_MAX_LIMIT} bytes")
    bodies = _set_bodies(ifname, config, max_size)
    return [codec.frame((family_id, 0, body), seq + i) for i, body in enumerate(bodies)]


# --- get ------------------------------------------------------------------------------------

def encode_get(family_id: int, seq: int, ifname: str) -> bytes:
    """WG_CMD_GET_DEVICE, a dump (the kernel has no plain get for it), as ``wg`` asks it."""
    body = _genl(WG_CMD_GET_DEVICE) + _ifname(ifname)
    return codec.frame((family_id, codec.NLM_F_DUMP, body), seq)


def parse_get(messages: Sequence[bytes]) -> DeviceState:
    """The device of a get dump: ``messages`` are what the socket received (each one or more
    netlink messages), up to NLMSG_DONE.  A peer cut across messages is put back together.

    GenlError: an error answer (errno ENODEV: no such device, EOPNOTSUPP: not a WireGuard
    device), a dump interrupted by a change (errno EINTR: ask again) or bytes we cannot read.
    """
    public_key: Key | None = None
    private_key: bytes | None = None
    listen_port = 0
    peers: dict[bytes, PeerDraft] = {}
    device_seen = False
    for datagram in messages:
        for mtype, flags, _, body in codec.messages(datagram):
            if mtype == codec.NLMSG_ERROR:
                err, message = _error_of(body, flags)
                if err:
                    raise _refused(err, message, "WireGuard device dump")
                continue
            if mtype == codec.NLMSG_DONE:
                code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                if code > 0:
                    raise _refused(code, "", "WireGuard device dump")
                continue
            if mtype < NLMSG_MIN_TYPE:
                continue
            if flags & codec.NLM_F_DUMP_INTR:
                raise GenlError("the WireGuard device changed during the dump; ask again",
                                errno=errno_mod.EINTR)
            if len(body) < GENLMSGHDR.size or body[0] != WG_CMD_GET_DEVICE:
                raise GenlError("a message of the dump is not a WireGuard device")
            device_seen = True
            for atype, payload in _attr_list(body, GENLMSGHDR.size):
                if atype == WGDEVICE_A_LISTEN_PORT:
                    listen_port = _int(payload, _U16, "listen port")
                elif atype == WGDEVICE_A_PUBLIC_KEY:
                    public_key = Key(_exact(payload, KEY_LEN, "device public key"))
                elif atype == WGDEVICE_A_PRIVATE_KEY:
                    private_key = _exact(payload, KEY_LEN, "device private key")
                elif atype == WGDEVICE_A_PEERS:
                    for _, peer in _attr_list(payload):
                        _merge_peer(peers, peer)
    if not device_seen:
        raise GenlError("the dump has no WireGuard device message")
    if public_key is None and private_key is not None and any(private_key):
        public_key = Key(private_key).public()
    return DeviceState(public_key=public_key, listen_port=listen_port,
                       peers=tuple(p.state() for p in peers.values()))


def _merge_peer(peers: dict[bytes, PeerDraft], payload: bytes) -> None:
    attrs = dict(_attr_list(payload))
    raw_key = attrs.get(WGPEER_A_PUBLIC_KEY)
    if raw_key is None:
        raise GenlError("a peer of the dump has no public key")
    raw_key = _exact(raw_key, KEY_LEN, _ATTR_NAMES[WGPEER_A_PUBLIC_KEY])
    peer = peers.get(raw_key)
    if peer is None:
        peer = peers[raw_key] = PeerDraft(Key(raw_key))
    for atype, value in attrs.items():
        if atype == WGPEER_A_PRESHARED_KEY:
            peer.has_preshared_key = any(_exact(value, KEY_LEN, _ATTR_NAMES[atype]))
        elif atype == WGPEER_A_ENDPOINT:
            peer.endpoint = _parse_sockaddr(value)
        elif atype == WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL:
            peer.keepalive = _int(value, _U16, _ATTR_NAMES[atype])
        elif atype == WGPEER_A_LAST_HANDSHAKE_TIME:
            peer.handshake_sec, peer.handshake_nsec = _TIMESPEC.unpack(
                _exact(value, _TIMESPEC.size, _ATTR_NAMES[atype]))
        elif atype == WGPEER_A_RX_BYTES:
            peer.rx_bytes = _int(value, _U64, _ATTR_NAMES[atype])
        elif atype == WGPEER_A_TX_BYTES:
            peer.tx_bytes = _int(value, _U64, _ATTR_NAMES[atype])
        elif atype == WGPEER_A_ALLOWEDIPS:
            peer.allowed_ips.extend(_parse_allowed_ip(p) for _, p in _attr_list(value))


def _parse_allowed_ip(payload: bytes) -> IPNetwork:
    a = dict(_attr_list(payload))
    family, raw, cidr = (a.get(WGALLOWEDIP_A_FAMILY), a.get(WGALLOWEDIP_A_IPADDR),
                         a.get(WGALLOWEDIP_A_CIDR_MASK))
    if family is None or raw is None or not cidr:
        raise GenlError("an allowed IP of the dump lacks its family, address or mask")
    fam = _int(family, _U16, "allowed IP family")
    size = {AF_INET: 4, AF_INET6: 16}.get(fam)
    if size is None or len(raw) != size or cidr[0] > 8 * size:
        raise GenlError(f"an allowed IP of the dump is not IPv4 or IPv6 (family {fam}, "
                        f"{len(raw)} bytes, /{cidr[0]})")
    address: IPAddress = IPv4Address(raw) if size == 4 else IPv6Address(raw)
    return ip_network((address, cidr[0]), strict=False)


def _parse_sockaddr(raw: bytes) -> Endpoint | None:
    if len(raw) < 2:
        raise GenlError("a peer's endpoint is cut short")
    family = _U16.unpack_from(raw)[0]
    if family == AF_INET and len(raw) >= 8:
        return Endpoint(IPv4Address(raw[4:8]), struct.unpack_from("!H", raw, 2)[0])
    if family == AF_INET6 and len(raw) >= 24:
        address = IPv6Address(raw[8:24])
        scope = _U32.unpack_from(raw, 24)[0] if len(raw) >= 28 else 0
        if scope:
            address = IPv6Address(f"{address}%{scope}")
        return Endpoint(address, struct.unpack_from("!H", raw, 2)[0])
    if family == codec.AF_UNSPEC:
        return None
    raise GenlError(f"a peer's endpoint is not IPv4 or IPv6 (family {family}, {len(raw)} bytes)")


def _exact(raw: bytes, size: int, what: str) -> bytes:
    if len(raw) != size:
        raise GenlError(f"the {what} is {len(raw)} bytes, not {size}")
    return raw


def _int(raw: bytes, fmt: struct.Struct, what: str) -> int:
    if len(raw) < fmt.size:
        raise GenlError(f"the {what} is {len(raw)} bytes, not {fmt.size}")
    return int(fmt.unpack_from(raw)[0])


# --- the link ---------------------------------------------------------------------------------

def encode_newlink(seq: int, ifname: str, mtu: int) -> bytes:
    """RTM_NEWLINK making a ``wireguard`` device; NLM_F_EXCL: an existing name is EEXIST."""
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 0 < mtu <= 0xFFFFFFFF:
        raise GenlError(f"MTU {mtu!r} is not a positive 32-bit number")
    linkinfo = _nla(codec.IFLA_INFO_KIND, b"wireguard\0")
    body = (codec.IFINFOMSG.pack(codec.AF_UNSPEC, 0, 0, 0, 0)
            + _ifname(ifname, codec.IFLA_IFNAME)
            + _nla(codec.IFLA_MTU, _U32.pack(mtu))
            + _nla(codec.IFLA_LINKINFO, linkinfo))
    return codec.frame((codec.RTM_NEWLINK, codec.NLM_F_CREATE | codec.NLM_F_EXCL, body), seq)
