"""WireGuard's generic netlink family (``flanneld.backends.wireguard.genl``) as bytes, no kernel.

Golden files (golden/wireguard/genl_*.hex): one message each as the socket sends it (sequence
1, pid 0, family id 0x20 where the kernel would give one), hex with an annotation line per
header and attribute (``#`` to the end of a line is a comment).  They were written once by
``WIREGUARD_GOLDEN_REGEN=1 pytest tests/control/test_wireguard_genl.py`` after pyroute2's
decoder had read each back to the fields listed in ``DECODED``; a change of the encoder must
show up as a diff of these files.  ``genl_dump_kernel.hex`` is a reply, built here in the
kernel's own attribute order (drivers/net/wireguard/netlink.c: a peer cut across two messages,
a pad attribute before a u64, CIDR mask first in an allowed IP) to test the parser.

Independent checks: pyroute2's ``wgmsg`` / ``ctrlmsg`` / ``ifinfmsg`` decode every request,
pyroute2 encodes dump replies (its own element numbering) for ``parse_get``, and the chunked
set requests are applied to a model of the kernel's ``set_peer`` to check what they do.
"""

from __future__ import annotations

import base64
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink import ctrlmsg
from pyroute2.netlink.generic.wireguard import wgmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from wg_vectors import (
    ADD_V4,
    ADD_V6,
    CHANGE,
    DEVICE_KEY,
    DEVICE_PUBLIC,
    PEER_A,
    PEER_B,
    PEER_C,
    PSK,
    REMOVE,
)

from flanneld import netlink_codec as codec
from flanneld.backends.wireguard import genl
from flanneld.backends.wireguard.driver import WireguardDriverError
from flanneld.backends.wireguard.keys import Key
from flanneld.backends.wireguard.model import (
    DeviceConfig,
    DeviceState,
    Endpoint,
    PeerConfig,
    PeerState,
)
from flanneld.netops import IPNetwork

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden" / "wireguard"
REGEN = os.environ.get("WIREGUARD_GOLDEN_REGEN") == "1"
FAMILY = 0x20
IFNAME = "flannel-wg"


SET_DEVICE = DeviceConfig(private_key=DEVICE_KEY, listen_port=51820, replace_peers=True)

MESSAGES: dict[str, tuple[str, bytes]] = {
    "genl_getfamily": ("CTRL_CMD_GETFAMILY \"wireguard\"", genl.encode_getfamily(1)),
    "genl_set_device": ("WG_CMD_SET_DEVICE: private key, listen port, replace peers",
                        genl.encode_set(FAMILY, 1, IFNAME, SET_DEVICE)),
    "genl_add_peer_v4": ("WG_CMD_SET_DEVICE: a peer with an IPv4 endpoint, PSK, keepalive",
                         genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=[ADD_V4]))),
    "genl_add_peer_v6": ("WG_CMD_SET_DEVICE: a peer with an IPv6 endpoint, no PSK",
                         genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=[ADD_V6]))),
    "genl_change_peer": ("WG_CMD_SET_DEVICE: new endpoint, allowed IPs added (no replace)",
                         genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=[CHANGE]))),
    "genl_remove_peer": ("WG_CMD_SET_DEVICE: remove a peer",
                         genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=[REMOVE]))),
    "genl_get": ("WG_CMD_GET_DEVICE (a dump)", genl.encode_get(FAMILY, 1, IFNAME)),
    "genl_newlink": ("RTM_NEWLINK kind wireguard", genl.encode_newlink(1, IFNAME, 1420)),
}
INPUTS = ("genl_dump_kernel",)

_REQ, _ACK, _DUMP, _CREATE, _EXCL = 0x1, 0x4, 0x300, 0x400, 0x200


def b64(key: Key) -> bytes:
    return base64.b64encode(key.raw)


# What pyroute2 reads in each golden message: nlmsg type and flags, (cmd, version), attributes
# (nested lists as lists; keys as pyroute2 shows them, base64).
PEER_V4_ATTRS: list[tuple[str, Any]] = [
    ("WGPEER_A_PUBLIC_KEY", b64(PEER_A)), ("WGPEER_A_PRESHARED_KEY", b64(PSK)),
    ("WGPEER_A_ENDPOINT", {"family": 2, "port": 51820, "addr": "198.18.0.2"}),
    ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25), ("WGPEER_A_FLAGS", 2),
    ("WGPEER_A_ALLOWEDIPS", ["10.244.2.0/24"])]
DECODED: dict[str, tuple[int, int, tuple[int, int], list[tuple[str, Any]]]] = {
    "genl_set_device": (FAMILY, _REQ | _ACK, (1, 1), [
        ("WGDEVICE_A_IFNAME", IFNAME), ("WGDEVICE_A_PRIVATE_KEY", b64(DEVICE_KEY)),
        ("WGDEVICE_A_LISTEN_PORT", 51820), ("WGDEVICE_A_FLAGS", 1)]),
    "genl_add_peer_v4": (FAMILY, _REQ | _ACK, (1, 1), [
        ("WGDEVICE_A_IFNAME", IFNAME), ("WGDEVICE_A_PEERS", [PEER_V4_ATTRS])]),
    "genl_add_peer_v6": (FAMILY, _REQ | _ACK, (1, 1), [
        ("WGDEVICE_A_IFNAME", IFNAME), ("WGDEVICE_A_PEERS", [[
            ("WGPEER_A_PUBLIC_KEY", b64(PEER_B)), ("WGPEER_A_PRESHARED_KEY", b64(Key(bytes(32)))),
            ("WGPEER_A_ENDPOINT", {"family": 10, "port": 51821, "flowinfo": 0,
                                   "addr": "2001:db8:18::2", "scope_id": 0}),
            ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0), ("WGPEER_A_FLAGS", 2),
            ("WGPEER_A_ALLOWEDIPS", ["fd00:244:2::/64", "10.244.3.0/24"])]])]),
    "genl_change_peer": (FAMILY, _REQ | _ACK, (1, 1), [
        ("WGDEVICE_A_IFNAME", IFNAME), ("WGDEVICE_A_PEERS", [[
            ("WGPEER_A_PUBLIC_KEY", b64(PEER_A)), ("WGPEER_A_PRESHARED_KEY", b64(Key(bytes(32)))),
            ("WGPEER_A_ENDPOINT", {"family": 2, "port": 51820, "addr": "198.18.0.3"}),
            ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0),
            ("WGPEER_A_ALLOWEDIPS", ["10.244.2.0/24", "10.244.20.0/24"])]])]),
    "genl_remove_peer": (FAMILY, _REQ | _ACK, (1, 1), [
        ("WGDEVICE_A_IFNAME", IFNAME), ("WGDEVICE_A_PEERS", [[
            ("WGPEER_A_PUBLIC_KEY", b64(PEER_B)), ("WGPEER_A_FLAGS", 1)]])]),
    "genl_get": (FAMILY, _REQ | _ACK | _DUMP, (0, 1), [("WGDEVICE_A_IFNAME", IFNAME)]),
}


# --- annotated hex ---------------------------------------------------------------------------

# context -> attribute type -> (name, kind); kinds: u8 u16 u32 u64 str key ip sockaddr
# timespec raw, "nest:<context>" (attributes), "list:<context>" (elements of type 0)
SCHEMA: dict[str, dict[int, tuple[str, str]]] = {
    "device": {1: ("WGDEVICE_A_IFINDEX", "u32"), 2: ("WGDEVICE_A_IFNAME", "str"),
               3: ("WGDEVICE_A_PRIVATE_KEY", "key"), 4: ("WGDEVICE_A_PUBLIC_KEY", "key"),
               5: ("WGDEVICE_A_FLAGS", "u32"), 6: ("WGDEVICE_A_LISTEN_PORT", "u16"),
               7: ("WGDEVICE_A_FWMARK", "u32"), 8: ("WGDEVICE_A_PEERS", "list:peer")},
    "peer": {0: ("WGPEER_A_UNSPEC (padding)", "raw"), 1: ("WGPEER_A_PUBLIC_KEY", "key"),
             2: ("WGPEER_A_PRESHARED_KEY", "key"), 3: ("WGPEER_A_FLAGS", "u32"),
             4: ("WGPEER_A_ENDPOINT", "sockaddr"),
             5: ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "u16"),
             6: ("WGPEER_A_LAST_HANDSHAKE_TIME", "timespec"), 7: ("WGPEER_A_RX_BYTES", "u64"),
             8: ("WGPEER_A_TX_BYTES", "u64"), 9: ("WGPEER_A_ALLOWEDIPS", "list:allowedip"),
             10: ("WGPEER_A_PROTOCOL_VERSION", "u32")},
    "allowedip": {1: ("WGALLOWEDIP_A_FAMILY", "u16"), 2: ("WGALLOWEDIP_A_IPADDR", "ip"),
                  3: ("WGALLOWEDIP_A_CIDR_MASK", "u8")},
    "ctrl": {1: ("CTRL_ATTR_FAMILY_ID", "u16"), 2: ("CTRL_ATTR_FAMILY_NAME", "str")},
    "link": {3: ("IFLA_IFNAME", "str"), 4: ("IFLA_MTU", "u32"),
             18: ("IFLA_LINKINFO", "nest:linkinfo")},
    "linkinfo": {1: ("IFLA_INFO_KIND", "str")},
}
def _flag_names(flags: int, context: str) -> str:
    names = {0x1: "REQUEST", 0x2: "MULTI", 0x4: "ACK", 0x10: "DUMP_INTR"}
    # the 0x100.. bits mean REPLACE/EXCL/CREATE in a new-request, ROOT|MATCH (DUMP) in a get
    names |= {0x100: "REPLACE", 0x200: "EXCL", 0x400: "CREATE"} if context == "link" else {
        0x300: "DUMP"}
    return "|".join(n for bit, n in names.items() if flags & bit == bit) or "0"


def _value(kind: str, raw: bytes) -> str:
    if kind in ("u8", "u16", "u32", "u64"):
        return str(int.from_bytes(raw, "little"))
    if kind == "str":
        return repr(raw.rstrip(b"\0").decode())
    if kind == "key":
        return base64.b64encode(raw).decode()
    if kind == "ip":
        return str(A(raw) if len(raw) == 4 else A6(raw))
    if kind == "sockaddr":
        family, port = struct.unpack_from("=H", raw)[0], struct.unpack_from("!H", raw, 2)[0]
        if family == 2:
            return f"sockaddr_in {A(raw[4:8])}:{port}"
        return f"sockaddr_in6 [{A6(raw[8:24])}]:{port} scope {struct.unpack_from('=I', raw, 24)[0]}"
    if kind == "timespec":
        sec, nsec = struct.unpack("=qq", raw)
        return f"{sec} s {nsec} ns"
    return raw.hex() or "(empty)"


def _annotate_attrs(data: bytes, context: str, depth: int, out: list[str]) -> None:
    offset, pad = 0, "  " * depth
    while offset < len(data):
        alen, atype = struct.unpack_from("=HH", data, offset)
        kind_type, nested = atype & 0x3FFF, " NESTED" if atype & 0x8000 else ""
        payload = data[offset + 4: offset + alen]
        end = offset + ((alen + 3) & ~3)
        if context.startswith("list:"):
            out.append(f"# {pad}element (type {kind_type}{nested}, len {alen})")
            out.append(data[offset: offset + 4].hex())
            _annotate_attrs(payload, context[5:], depth + 1, out)
        else:
            name, kind = SCHEMA[context][kind_type]
            if kind.startswith(("nest:", "list:")):
                child = kind if kind.startswith("list:") else kind[5:]
                out.append(f"# {pad}{name}{nested} (len {alen})")
                out.append(data[offset: offset + 4].hex())
                _annotate_attrs(payload, child, depth + 1, out)
            else:
                out.append(f"# {pad}{name} (len {alen}) = {_value(kind, payload)}")
                out.append(data[offset: end].hex())
        offset = end


def annotate(data: bytes, title: str, context: str) -> str:
    """Hex of ``data`` (netlink messages) with a comment line before each header and
    attribute; ``context``: "device" (WireGuard), "ctrl" (the controller) or "link"."""
    out = [f"# {title}"]
    offset = 0
    while offset < len(data):
        length, mtype, flags, seq, pid = codec.NLMSGHDR.unpack_from(data, offset)
        names = _flag_names(flags, context)
        out.append(f"# nlmsghdr: len {length}, type {mtype:#x}, flags {flags:#x} ({names}), "
                   f"seq {seq}, pid {pid}")
        out.append(data[offset: offset + 16].hex())
        body = data[offset + 16: offset + length]
        if mtype == codec.NLMSG_DONE:
            out.append(f"# NLMSG_DONE: error {struct.unpack_from('=i', body)[0]}")
            out.append(body.hex())
        elif context == "link":  # RTM_NEWLINK and GENL_ID_CTRL are both 0x10
            out.append("# ifinfomsg: family 0, type 0, index 0, flags 0, change 0")
            out.append(body[:16].hex())
            _annotate_attrs(body[16:], "link", 0, out)
        else:
            out.append(f"# genlmsghdr: cmd {body[0]}, version {body[1]}")
            out.append(body[:4].hex())
            _annotate_attrs(body[4:], context, 0, out)
        offset += (length + 3) & ~3
    return "\n".join(out) + "\n"


def golden(name: str) -> bytes:
    text = (GOLDEN / f"{name}.hex").read_text()
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


def write_golden(name: str, title: str, data: bytes) -> None:
    context = {"genl_getfamily": "ctrl", "genl_newlink": "link"}.get(name, "device")
    text = annotate(data, title, context)
    assert bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines())) == data
    (GOLDEN / f"{name}.hex").write_text(text)


# --- pyroute2 helpers -----------------------------------------------------------------------

def plain(attrs: Any) -> list[tuple[str, Any]]:
    """pyroute2's decoded wgmsg attributes as (name, value) pairs: nests and lists as lists,
    allowed IPs as "addr/cidr", endpoints as dicts without padding."""
    out: list[tuple[str, Any]] = []
    for attr in attrs:
        name, value = attr[0], attr[1]
        if name in ("WGDEVICE_A_PEERS",):
            value = [plain(peer["attrs"]) for peer in value]
        elif name == "WGPEER_A_ALLOWEDIPS":
            value = [ip["addr"] for ip in value]
        elif name == "WGPEER_A_ENDPOINT":
            value = {k: v for k, v in value.items() if k != "__pad"}
        elif hasattr(value, "get") and value.get("attrs") is not None:
            value = plain(value["attrs"])
        out.append((name, value))
    return out


def decode_wg(data: bytes) -> wgmsg:
    msg = wgmsg(data)
    msg.decode()
    assert msg["header"]["length"] == len(data)
    return msg


def nlmsg(mtype: int, flags: int, body: bytes, seq: int = 1) -> bytes:
    return codec.NLMSGHDR.pack(16 + len(body), mtype, flags, seq, 4242) + body


def done(code: int = 0, seq: int = 1) -> bytes:
    return nlmsg(codec.NLMSG_DONE, 0x2, struct.pack("=i", code), seq)


def error(code: int, request: bytes = b"", flags: int = 0) -> bytes:
    echoed = request or codec.NLMSGHDR.pack(16, FAMILY, 5, 1, 0)
    return nlmsg(codec.NLMSG_ERROR, flags, struct.pack("=i", -code) + echoed)


# --- golden bytes ---------------------------------------------------------------------------

def test_every_golden_file_is_listed() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("genl_*.hex")) == sorted([*MESSAGES, *INPUTS])


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_encoder_matches_golden(name: str) -> None:
    title, data = MESSAGES[name]
    if REGEN:
        write_golden(name, title, data)
        pytest.skip("golden file regenerated")
    assert data == golden(name)


@pytest.mark.parametrize("name", sorted(DECODED))
def test_pyroute2_decodes_golden(name: str) -> None:
    mtype, flags, (cmd, version), attrs = DECODED[name]
    data = golden(name)
    msg = decode_wg(data)
    header = msg["header"]
    assert (header["type"], header["flags"], header["sequence_number"], header["pid"]) == (
        mtype, flags, 1, 0)
    assert (msg["cmd"], msg["version"], msg["reserved"]) == (cmd, version, 0)
    assert plain(msg["attrs"]) == attrs


def test_pyroute2_decodes_getfamily() -> None:
    data = golden("genl_getfamily")
    msg = ctrlmsg(data)
    msg.decode()
    header = msg["header"]
    assert (header["length"], header["type"], header["flags"], header["sequence_number"]) == (
        len(data), 0x10, _REQ | _ACK, 1)
    assert (msg["cmd"], msg["version"]) == (3, 1)
    assert [(a[0], a[1]) for a in msg["attrs"]] == [("CTRL_ATTR_FAMILY_NAME", "wireguard")]


def test_pyroute2_decodes_newlink() -> None:
    data = golden("genl_newlink")
    msg = ifinfmsg(data)
    msg.decode()
    header = msg["header"]
    assert (header["length"], header["type"], header["flags"], header["sequence_number"]) == (
        len(data), 16, _REQ | _ACK | _CREATE | _EXCL, 1)
    assert (msg["family"], msg["ifi_type"], msg["index"], msg["flags"], msg["change"]) == (
        0, 0, 0, 0, 0)
    assert [(a[0], a[1] if a[0] != "IFLA_LINKINFO" else [(b[0], b[1]) for b in a[1]["attrs"]])
            for a in msg["attrs"]] == [
        ("IFLA_IFNAME", IFNAME), ("IFLA_MTU", 1420),
        ("IFLA_LINKINFO", [("IFLA_INFO_KIND", "wireguard")])]


def test_newlink_matches_pyroute2_encoding() -> None:
    """pyroute2, asked for the same device, encodes the very same bytes."""
    msg = ifinfmsg()
    msg["header"].update({"type": 16, "flags": _REQ | _ACK | _CREATE | _EXCL,
                          "sequence_number": 1})
    msg["attrs"] = [("IFLA_IFNAME", IFNAME), ("IFLA_MTU", 1420),
                    ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "wireguard")]})]
    msg.encode()
    assert bytes(msg.data) == golden("genl_newlink")


def test_getfamily_matches_pyroute2_encoding() -> None:
    msg = ctrlmsg()
    msg["cmd"], msg["version"] = 3, 1
    msg["header"].update({"type": 0x10, "flags": _REQ | _ACK, "sequence_number": 1})
    msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", "wireguard")]
    msg.encode()
    assert bytes(msg.data) == golden("genl_getfamily")


def _walk(data: bytes) -> list[tuple[int, bytes]]:
    """(raw type, payload) of the attributes in ``data``."""
    out, offset = [], 0
    while offset < len(data):
        alen, atype = struct.unpack_from("=HH", data, offset)
        out.append((atype, data[offset + 4: offset + alen]))
        offset += (alen + 3) & ~3
    return out


def _nests(data: bytes, context: str) -> Iterator[tuple[str, int]]:
    """(context, raw type) of every nest in a golden message's attributes, recursively."""
    offset = 0
    while offset < len(data):
        alen, atype = struct.unpack_from("=HH", data, offset)
        payload = data[offset + 4: offset + alen]
        if context.startswith("list:"):
            yield context, atype
            yield from _nests(payload, context[5:])
        else:
            kind = SCHEMA[context][atype & 0x3FFF][1]
            if kind.startswith("list:"):
                yield context, atype
                yield from _nests(payload, kind)
        offset += (alen + 3) & ~3


def test_nests_carry_nla_f_nested_and_elements_are_type_0() -> None:
    """The kernel parses strictly (NLA_F_NESTED required); list elements are type 0 as the
    kernel writes them and wg sends them."""
    data = genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=[ADD_V4, ADD_V6, REMOVE]))
    nests = list(_nests(data[20:], "device"))
    assert nests == [
        ("device", 0x8008),  # WGDEVICE_A_PEERS
        ("list:peer", 0x8000), ("peer", 0x8009),
        ("list:allowedip", 0x8000),
        ("list:peer", 0x8000), ("peer", 0x8009),
        ("list:allowedip", 0x8000), ("list:allowedip", 0x8000),
        ("list:peer", 0x8000)]


def test_endpoint_sockaddr_sizes() -> None:
    """The kernel takes an endpoint of exactly sizeof(sockaddr_in) 16 or sockaddr_in6 28
    bytes (anything else is silently ignored)."""
    def endpoint_of(data: bytes) -> bytes:
        peers = dict(_walk(data[20:]))[0x8008]
        first_peer = _walk(peers)[0][1]
        return dict(_walk(first_peer))[genl.WGPEER_A_ENDPOINT]

    v4 = endpoint_of(golden("genl_add_peer_v4"))
    assert v4 == struct.pack("=H", 2) + struct.pack("!H", 51820) + bytes([198, 18, 0, 2]) + bytes(8)
    v6 = endpoint_of(golden("genl_add_peer_v6"))
    assert len(v6) == 28 and v6[:8] == struct.pack("=H", 10) + struct.pack("!H", 51821) + bytes(4)
    assert v6[8:24] == A6("2001:db8:18::2").packed and v6[24:] == bytes(4)
    scoped = genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=[
        PeerConfig(PEER_A, Endpoint(A6("fe80::1%7"), 1))]))
    assert endpoint_of(scoped)[24:] == struct.pack("=I", 7)


# --- encoding errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("ifname", "config"), [
    ("", DeviceConfig()),
    ("a-very-long-name", DeviceConfig()),  # 16 bytes: IFNAMSIZ with the NUL is 16
    ("nul\0name", DeviceConfig()),
    (IFNAME, DeviceConfig(listen_port=65536)),
    (IFNAME, DeviceConfig(peers=[PeerConfig(PEER_A, preshared_key=PSK, keepalive=-1)])),
    (IFNAME, DeviceConfig(peers=[PeerConfig(PEER_A, Endpoint(A("1.2.3.4"), 70000), (), PSK)])),
    (IFNAME, DeviceConfig(peers=[PeerConfig(PEER_A, Endpoint(A6("fe80::1%eth0"), 1), (), PSK)])),
], ids=["empty-name", "long-name", "nul-name", "port", "keepalive", "endpoint-port", "scope"])
def test_encode_set_refuses(ifname: str, config: DeviceConfig) -> None:
    with pytest.raises(genl.GenlError) as info:
        genl.encode_set(FAMILY, 1, ifname, config)
    assert PSK.hex() not in str(info.value) and PSK.base64() not in str(info.value)
    assert isinstance(info.value, WireguardDriverError)


def test_encode_newlink_refuses() -> None:
    with pytest.raises(genl.GenlError):
        genl.encode_newlink(1, IFNAME, 0)
    with pytest.raises(genl.GenlError):
        genl.encode_newlink(1, "x" * 16, 1420)
    assert genl.encode_newlink(1, "x" * 15, 1420)[32 + 4: 32 + 4 + 16] == b"x" * 15 + b"\0"


# --- chunks -----------------------------------------------------------------------------------

@dataclass
class KernelPeer:
    preshared_key: bytes = bytes(32)
    endpoint: tuple[str, int] | None = None
    keepalive: int = 0
    allowed_ips: list[str] = field(default_factory=list)


@dataclass
class KernelDevice:
    """wg_set_device / set_peer (drivers/net/wireguard/netlink.c), reduced to the state."""

    private_key: bytes = bytes(32)
    listen_port: int = 0
    peers: dict[bytes, KernelPeer] = field(default_factory=dict)

    def set(self, data: bytes) -> None:
        msg = decode_wg(data)
        assert msg["cmd"] == genl.WG_CMD_SET_DEVICE and msg["header"]["flags"] == _REQ | _ACK
        assert msg.get_attr("WGDEVICE_A_IFNAME") == IFNAME
        if msg.get_attr("WGDEVICE_A_FLAGS"):
            self.peers.clear()
        if msg.get_attr("WGDEVICE_A_LISTEN_PORT") is not None:
            self.listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT")
        if msg.get_attr("WGDEVICE_A_PRIVATE_KEY") is not None:
            self.private_key = base64.b64decode(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
        for peer_attrs in msg.get_attr("WGDEVICE_A_PEERS") or []:
            a = dict((x[0], x[1]) for x in peer_attrs["attrs"])
            key = base64.b64decode(a["WGPEER_A_PUBLIC_KEY"])
            flags = a.get("WGPEER_A_FLAGS", 0)
            if flags & genl.WGPEER_F_REMOVE_ME:
                self.peers.pop(key, None)
                continue
            peer = self.peers.setdefault(key, KernelPeer())
            if "WGPEER_A_PRESHARED_KEY" in a:
                peer.preshared_key = base64.b64decode(a["WGPEER_A_PRESHARED_KEY"])
            if "WGPEER_A_ENDPOINT" in a:
                peer.endpoint = (a["WGPEER_A_ENDPOINT"]["addr"], a["WGPEER_A_ENDPOINT"]["port"])
            if flags & genl.WGPEER_F_REPLACE_ALLOWEDIPS:
                peer.allowed_ips.clear()
            peer.allowed_ips += [ip["addr"] for ip in a.get("WGPEER_A_ALLOWEDIPS", [])]
            if "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL" in a:
                peer.keepalive = a["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"]


def many_peers(count: int) -> list[PeerConfig]:
    return [PeerConfig(Key(i.to_bytes(4, "big") * 8),
                       Endpoint(A(f"198.18.{i // 250}.{i % 250 + 1}"), 51820),
                       (N(f"10.{i // 250}.{i % 250}.0/24"),), keepalive=25)
            for i in range(count)]


def expected_kernel(config: DeviceConfig) -> dict[bytes, KernelPeer]:
    return {p.public_key.raw: KernelPeer(
        p.preshared_key.raw if p.preshared_key else bytes(32),
        (str(p.endpoint.address), p.endpoint.port) if p.endpoint else None, p.keepalive,
        [str(n) for n in p.allowed_ips]) for p in config.peers}


def test_small_config_is_one_chunk() -> None:
    config = DeviceConfig(private_key=DEVICE_KEY, listen_port=51820, replace_peers=True,
                          peers=[ADD_V4, ADD_V6])
    assert genl.encode_set_chunks(FAMILY, 9, IFNAME, config) == [
        genl.encode_set(FAMILY, 9, IFNAME, config)]
    assert genl.encode_set_chunks(FAMILY, 9, IFNAME, DeviceConfig()) == [
        genl.encode_set(FAMILY, 9, IFNAME, DeviceConfig())]


def test_many_peers_split_whole() -> None:
    config = DeviceConfig(private_key=DEVICE_KEY, listen_port=51820, replace_peers=True,
                          peers=many_peers(1000))
    chunks = genl.encode_set_chunks(FAMILY, 100, IFNAME, config)
    assert len(chunks) >= 4
    peers_seen: list[bytes] = []
    for i, chunk in enumerate(chunks):
        assert len(chunk) <= genl.MAX_MESSAGE
        msg = decode_wg(chunk)
        assert msg["header"]["sequence_number"] == 100 + i
        names = [a[0] for a in msg["attrs"]]
        device_attrs = ["WGDEVICE_A_PRIVATE_KEY", "WGDEVICE_A_LISTEN_PORT", "WGDEVICE_A_FLAGS"]
        assert names == ["WGDEVICE_A_IFNAME", *(device_attrs if i == 0 else []),
                         "WGDEVICE_A_PEERS"]
        for peer in msg.get_attr("WGDEVICE_A_PEERS"):
            peers_seen.append(base64.b64decode(peer.get_attr("WGPEER_A_PUBLIC_KEY")))
            assert peer.get_attr("WGPEER_A_PRESHARED_KEY") is not None  # never cut in two
    assert peers_seen == [p.public_key.raw for p in config.peers]
    assert len(chunks[0]) > genl.MAX_MESSAGE - 200  # filled, not cut early
    kernel = KernelDevice(peers={b"x" * 32: KernelPeer()})
    for chunk in chunks:
        kernel.set(chunk)
    assert kernel.peers == expected_kernel(config)
    assert (kernel.private_key, kernel.listen_port) == (DEVICE_KEY.raw, 51820)


def test_huge_peer_continues_without_replace() -> None:
    nets = tuple(N(f"10.{i // 256}.{i % 256}.0/24") for i in range(3000))
    big = PeerConfig(PEER_A, Endpoint(A("198.18.0.2"), 51820), nets, PSK, 25)
    config = DeviceConfig(peers=[ADD_V6, big, PeerConfig(PEER_C)])
    chunks = genl.encode_set_chunks(FAMILY, 1, IFNAME, config, max_size=16384)
    assert len(chunks) >= 6 and all(len(c) <= 16384 for c in chunks)
    parts = [(base64.b64decode(p.get_attr("WGPEER_A_PUBLIC_KEY")), p)
             for c in chunks for p in decode_wg(c).get_attr("WGDEVICE_A_PEERS")]
    big_parts = [p for key, p in parts if key == PEER_A.raw]
    assert len(big_parts) >= 5
    first, *rest = big_parts
    assert first.get_attr("WGPEER_A_FLAGS") == genl.WGPEER_F_REPLACE_ALLOWEDIPS
    assert first.get_attr("WGPEER_A_PRESHARED_KEY") == b64(PSK)
    for part in rest:  # public key and allowed IPs only
        assert [a[0] for a in part["attrs"]] == ["WGPEER_A_PUBLIC_KEY", "WGPEER_A_ALLOWEDIPS"]
    assert [key for key, _ in parts].count(PEER_B.raw) == 1
    assert parts[-1][0] == PEER_C.raw
    kernel = KernelDevice(peers={PEER_A.raw: KernelPeer(allowed_ips=["192.168.0.0/16"])})
    for chunk in chunks:
        kernel.set(chunk)
    assert kernel.peers == expected_kernel(config)


def test_one_message_cannot_hold_64k_of_peers() -> None:
    with pytest.raises(genl.GenlError, match="over 64 KiB: split"):
        genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=many_peers(600)))
    assert len(genl.encode_set(FAMILY, 1, IFNAME, DeviceConfig(peers=many_peers(400)))) < 65536


def test_chunk_limits() -> None:
    for size in (100, 511, 65536):
        with pytest.raises(ValueError, match="max_size"):
            genl.encode_set_chunks(FAMILY, 1, IFNAME, DeviceConfig(), max_size=size)
    chunks = genl.encode_set_chunks(FAMILY, 1, IFNAME, DeviceConfig(peers=many_peers(2000)),
                                    max_size=65535)
    assert len(chunks) == 5 and all(len(c) <= 65535 for c in chunks)
    big_v6 = PeerConfig(PEER_A, Endpoint(A6("2001:db8::1"), 1),
                        tuple(N6(f"fd00:{i:x}::/64") for i in range(40)), PSK, 25)
    chunks = genl.encode_set_chunks(FAMILY, 1, IFNAME, DeviceConfig(
        private_key=DEVICE_KEY, listen_port=1, replace_peers=True, peers=[big_v6]), max_size=512)
    assert len(chunks) > 2 and all(len(c) <= 512 for c in chunks)


# --- parse_get --------------------------------------------------------------------------------

def pyroute2_dump() -> list[bytes]:
    """A two-message dump as pyroute2 encodes it, peer B cut across the messages."""
    def message(attrs: list[Any]) -> bytes:
        msg = wgmsg()
        msg["cmd"], msg["version"] = 0, 1
        msg["header"].update({"type": FAMILY, "flags": 0x2, "sequence_number": 7, "pid": 42})
        msg["attrs"] = attrs
        msg.encode()
        return bytes(msg.data)

    def allowed(*nets: IPNetwork) -> list[dict[str, Any]]:
        return [{"attrs": [("WGALLOWEDIP_A_FAMILY", 2 if n.version == 4 else 10),
                           ("WGALLOWEDIP_A_IPADDR", n.network_address.packed),
                           ("WGALLOWEDIP_A_CIDR_MASK", n.prefixlen)]} for n in nets]

    first = message([
        ("WGDEVICE_A_LISTEN_PORT", 51820), ("WGDEVICE_A_FWMARK", 0),
        ("WGDEVICE_A_IFINDEX", 5), ("WGDEVICE_A_IFNAME", IFNAME),
        ("WGDEVICE_A_PRIVATE_KEY", DEVICE_KEY.base64()),
        ("WGDEVICE_A_PUBLIC_KEY", DEVICE_PUBLIC.base64()),
        ("WGDEVICE_A_PEERS", [
            {"attrs": [("WGPEER_A_PUBLIC_KEY", PEER_A.base64()),
                       ("WGPEER_A_PRESHARED_KEY", PSK.base64()),
                       ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000,
                                                         "tv_nsec": 500000000}),
                       ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25),
                       ("WGPEER_A_TX_BYTES", 1 << 40), ("WGPEER_A_RX_BYTES", 7),
                       ("WGPEER_A_PROTOCOL_VERSION", 1),
                       ("WGPEER_A_ENDPOINT", {"addr": "198.18.0.2", "port": 51820}),
                       ("WGPEER_A_ALLOWEDIPS", allowed(N("10.244.2.0/24")))]},
            {"attrs": [("WGPEER_A_PUBLIC_KEY", PEER_B.base64()),
                       ("WGPEER_A_PRESHARED_KEY", Key(bytes(32)).base64()),
                       ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}),
                       ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0),
                       ("WGPEER_A_TX_BYTES", 0), ("WGPEER_A_RX_BYTES", 0),
                       ("WGPEER_A_PROTOCOL_VERSION", 1),
                       ("WGPEER_A_ENDPOINT", {"addr": "2001:db8:18::2", "port": 51821}),
                       ("WGPEER_A_ALLOWEDIPS", allowed(N6("fd00:244:2::/64")))]}])])
    second = message([("WGDEVICE_A_PEERS", [
        {"attrs": [("WGPEER_A_PUBLIC_KEY", PEER_B.base64()),
                   ("WGPEER_A_ALLOWEDIPS", allowed(N("10.244.3.0/24"), N("10.244.4.0/24")))]},
        {"attrs": [("WGPEER_A_PUBLIC_KEY", PEER_C.base64()),
                   ("WGPEER_A_PRESHARED_KEY", Key(bytes(32)).base64()),
                   ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0)]}])])
    return [first, second, done(seq=7)]


PYROUTE2_STATE = DeviceState(public_key=DEVICE_PUBLIC, listen_port=51820, peers=(
    PeerState(PEER_A, Endpoint(A("198.18.0.2"), 51820), (N("10.244.2.0/24"),), True, 25,
              1700000000.5, 7, 1 << 40),
    PeerState(PEER_B, Endpoint(A6("2001:db8:18::2"), 51821),
              (N6("fd00:244:2::/64"), N("10.244.3.0/24"), N("10.244.4.0/24")), False, 0, 0.0,
              0, 0),
    PeerState(PEER_C, None, (), False, 0, 0.0, 0, 0),
))


def test_parse_get_pyroute2_dump() -> None:
    messages = pyroute2_dump()
    assert genl.parse_get(messages) == PYROUTE2_STATE
    assert genl.parse_get([b"".join(messages)]) == PYROUTE2_STATE  # one datagram
    assert genl.parse_get(messages[:2]) == PYROUTE2_STATE  # DONE not required


# The kernel's way (netlink.c get_peer / wg_get_device_dump / get_allowedips), by hand.
def _a(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + bytes(-len(payload) % 4)


def _kernel_allowed(net: IPNetwork) -> bytes:
    return _a(0x8000, _a(3, bytes([net.prefixlen])) + _a(1, struct.pack("=H", 2 if net.version == 4 else 10))
              + _a(2, net.network_address.packed))


def kernel_dump() -> bytes:
    def genlmsg(attrs: bytes) -> bytes:
        return nlmsg(FAMILY, 0x2, struct.pack("=BBH", 0, 1, 0) + attrs, seq=3)

    peer_a = _a(0x8000, _a(1, PEER_A.raw) + _a(2, PSK.raw)
                + _a(6, struct.pack("=qq", 1700000001, 1000))
                + _a(5, struct.pack("=H", 25))
                + _a(0, b"")  # nla_put_u64_64bit's padding, where alignment asks for it
                + _a(8, struct.pack("=Q", 99)) + _a(7, struct.pack("=Q", 100))
                + _a(10, struct.pack("=I", 1))
                + _a(4, struct.pack("=H", 10) + struct.pack("!H", 51820) + bytes(4)
                     + A6("fe80::2").packed + struct.pack("=I", 3))
                + _a(0x8009, _kernel_allowed(N("10.244.2.0/24"))
                     + _kernel_allowed(N6("fd00:244:2::/64"))))
    first = genlmsg(_a(6, struct.pack("=H", 51820)) + _a(7, struct.pack("=I", 0))
                    + _a(1, struct.pack("=I", 5)) + _a(2, IFNAME.encode() + b"\0")
                    + _a(3, DEVICE_KEY.raw) + _a(4, DEVICE_PUBLIC.raw)
                    + _a(0x8008, peer_a))
    # the next message: peer A's remaining allowed IPs, public key only before them
    peer_a_rest = _a(0x8000, _a(1, PEER_A.raw) + _a(0x8009, _kernel_allowed(N("10.244.20.0/24"))))
    peer_b = _a(0x8000, _a(1, PEER_B.raw) + _a(2, bytes(32)) + _a(6, bytes(16))
                + _a(5, struct.pack("=H", 0)) + _a(8, bytes(8)) + _a(7, bytes(8))
                + _a(10, struct.pack("=I", 1))
                + _a(4, struct.pack("=H", 2) + struct.pack("!H", 51821) + A("198.18.0.4").packed
                     + bytes(8)))
    second = genlmsg(_a(0x8008, peer_a_rest + peer_b))
    return first + second + done(seq=3)


KERNEL_STATE = DeviceState(public_key=DEVICE_PUBLIC, listen_port=51820, peers=(
    PeerState(PEER_A, Endpoint(A6("fe80::2%3"), 51820),
              (N("10.244.2.0/24"), N6("fd00:244:2::/64"), N("10.244.20.0/24")), True, 25,
              1700000001.000001, 100, 99),
    PeerState(PEER_B, Endpoint(A("198.18.0.4"), 51821), (), False, 0, 0.0, 0, 0),
))


def test_parse_get_kernel_dump_golden() -> None:
    if REGEN:
        write_golden("genl_dump_kernel", "WG_CMD_GET_DEVICE dump reply, kernel order",
                     kernel_dump())
        pytest.skip("golden file regenerated")
    data = golden("genl_dump_kernel")
    assert data == kernel_dump()
    assert genl.parse_get([data]) == KERNEL_STATE
    split = [nlmsg_bytes for nlmsg_bytes in _split(data)]
    assert len(split) == 3 and genl.parse_get(split) == KERNEL_STATE


def _split(data: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        yield data[offset: offset + length]
        offset += (length + 3) & ~3


def test_pyroute2_reads_the_kernel_dump_like_us() -> None:
    """The hand-built reply is well-formed as pyroute2 sees it too."""
    first, second, _ = _split(golden("genl_dump_kernel"))
    msg = decode_wg(first)
    assert msg.get_attr("WGDEVICE_A_IFNAME") == IFNAME
    assert msg.get_attr("WGDEVICE_A_PUBLIC_KEY") == b64(DEVICE_PUBLIC)
    (peer,) = msg.get_attr("WGDEVICE_A_PEERS")
    assert peer.get_attr("WGPEER_A_TX_BYTES") == 99 and peer.get_attr("WGPEER_A_RX_BYTES") == 100
    assert [ip["addr"] for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS")] == [
        "10.244.2.0/24", "fd00:244:2::/64"]
    assert [p.get_attr("WGPEER_A_PUBLIC_KEY") for p in decode_wg(second).get_attr(
        "WGDEVICE_A_PEERS")] == [b64(PEER_A), b64(PEER_B)]


def test_parse_get_derives_public_key_without_one() -> None:
    body = struct.pack("=BBH", 0, 1, 0) + _a(3, DEVICE_KEY.raw) + _a(6, struct.pack("=H", 7))
    state = genl.parse_get([nlmsg(FAMILY, 2, body), done()])
    assert state == DeviceState(DEVICE_PUBLIC, 7, ())
    no_key = genl.parse_get([nlmsg(FAMILY, 2, struct.pack("=BBH", 0, 1, 0)), done()])
    assert no_key == DeviceState(None, 0, ())
    shown = repr(genl.parse_get([golden("genl_dump_kernel")]))
    for secret in (DEVICE_KEY, PSK):
        assert secret.hex() not in shown and secret.base64()[:8] not in shown


@pytest.mark.parametrize(("messages", "code", "text"), [
    ([error(errno.ENODEV)], errno.ENODEV, "No such device"),
    ([error(errno.EOPNOTSUPP)], errno.EOPNOTSUPP, "not supported"),
    ([done(-errno.EMSGSIZE)], errno.EMSGSIZE, "Message too long"),
    ([nlmsg(FAMILY, 0x2 | 0x10, struct.pack("=BBH", 0, 1, 0)), done()], errno.EINTR,
     "changed during the dump"),
])
def test_parse_get_errors(messages: list[bytes], code: int, text: str) -> None:
    with pytest.raises(genl.GenlError) as info:
        genl.parse_get(messages)
    assert info.value.errno == code and text in str(info.value)


def _peer_message(peer_attrs: bytes) -> list[bytes]:
    body = struct.pack("=BBH", 0, 1, 0) + _a(0x8008, _a(0x8000, peer_attrs))
    return [nlmsg(FAMILY, 2, body), done()]


@pytest.mark.parametrize(("messages", "text"), [
    ([done()], "no WireGuard device message"),
    ([], "no WireGuard device message"),
    ([nlmsg(FAMILY, 2, struct.pack("=BBH", 1, 1, 0))], "not a WireGuard device"),
    ([nlmsg(FAMILY, 2, struct.pack("=BBH", 0, 1, 0) + struct.pack("=HH", 40, 6) + b"xx")],
     "bad length"),
    ([nlmsg(FAMILY, 2, struct.pack("=BBH", 0, 1, 0) + b"\x08\x00")], "cut short"),
    (_peer_message(_a(2, PSK.raw)), "no public key"),
    (_peer_message(_a(1, PEER_A.raw[:31])), "public key is 31 bytes"),
    (_peer_message(_a(1, PEER_A.raw) + _a(2, PSK.raw[:16])), "preshared key is 16 bytes"),
    (_peer_message(_a(1, PEER_A.raw) + _a(2, PSK.raw) + _a(4, struct.pack("=H", 7) + bytes(14))),
     "endpoint is not IPv4 or IPv6 (family 7"),
    (_peer_message(_a(1, PEER_A.raw) + _a(2, PSK.raw) + _a(6, bytes(8))),
     "last handshake time is 8 bytes"),
    (_peer_message(_a(1, PEER_A.raw) + _a(0x8009, _a(0x8000, _a(1, struct.pack("=H", 2))))),
     "lacks its family, address or mask"),
    (_peer_message(_a(1, PEER_A.raw) + _a(0x8009, _a(0x8000, _a(1, struct.pack("=H", 2))
                                                   + _a(2, bytes(16)) + _a(3, b"\x18")))),
     "not IPv4 or IPv6 (family 2, 16 bytes, /24)"),
    (_peer_message(_a(1, PEER_A.raw) + _a(0x8009, _a(0x8000, _a(1, struct.pack("=H", 2))
                                                   + _a(2, bytes(4)) + _a(3, b"\x21")))),
     "/33"),
])
def test_parse_get_malformed(messages: list[bytes], text: str) -> None:
    with pytest.raises(genl.GenlError) as info:
        genl.parse_get(messages)
    message = str(info.value)
    assert text in message and info.value.errno is None
    for secret in (PSK, DEVICE_KEY):
        assert secret.hex() not in message and secret.base64() not in message


# --- family id and acks -----------------------------------------------------------------------

def ctrl_reply(name: str = "wireguard", family_id: int = 0x1B) -> bytes:
    msg = ctrlmsg()
    msg["cmd"], msg["version"] = 1, 2
    msg["header"].update({"type": 0x10, "flags": 0, "sequence_number": 1, "pid": 4242})
    msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", name), ("CTRL_ATTR_FAMILY_ID", family_id),
                    ("CTRL_ATTR_VERSION", 1), ("CTRL_ATTR_HDRSIZE", 0),
                    ("CTRL_ATTR_MAXATTR", 8)]
    msg.encode()
    return bytes(msg.data)


def test_parse_family_id() -> None:
    assert genl.parse_family_id(ctrl_reply() + error(0, golden("genl_getfamily"))) == 0x1B
    assert genl.parse_family_id(ctrl_reply(family_id=0x2A)) == 0x2A
    with pytest.raises(genl.GenlError) as info:
        genl.parse_family_id(error(errno.ENOENT, golden("genl_getfamily")))
    assert info.value.errno == errno.ENOENT and "wireguard module loaded" in str(info.value)
    with pytest.raises(genl.GenlError) as info:
        genl.parse_family_id(error(errno.EPERM))
    assert info.value.errno == errno.EPERM and "Operation not permitted" in str(info.value)
    for other in (ctrl_reply(name="nl80211"), error(0), b""):
        with pytest.raises(genl.GenlError) as info:
            genl.parse_family_id(other)
        assert info.value.errno is None


def test_parse_ack() -> None:
    request = golden("genl_add_peer_v4")
    assert genl.parse_ack(error(0, request)) == 0
    assert genl.parse_ack(error(errno.EEXIST, request)) == errno.EEXIST
    assert genl.parse_ack(done() + error(errno.EINVAL)) == errno.EINVAL
    # extended ack: capped echo (header only), then NLMSGERR_ATTR_MSG
    capped = codec.NLMSGHDR.pack(len(request), FAMILY, 5, 1, 0) + _a(1, b"NLA_F_NESTED is missing\0")
    data = error(errno.EINVAL, capped, flags=codec.NLM_F_CAPPED | codec.NLM_F_ACK_TLVS)
    assert genl.parse_ack_detail(data) == (errno.EINVAL, "NLA_F_NESTED is missing")
    with pytest.raises(genl.GenlError) as info:
        genl.check_ack(data)
    assert info.value.errno == errno.EINVAL
    assert str(info.value) == ("the kernel refused the WireGuard configuration: Invalid argument "
                               "(NLA_F_NESTED is missing)")
    genl.check_ack(error(0, request))  # no GenlError
    # the echoed request holds the keys, but they are not part of the message
    with pytest.raises(genl.GenlError) as info:
        genl.check_ack(error(errno.ENODEV, request))
    assert PSK.base64() not in str(info.value) and PSK.hex() not in str(info.value)
    for bad in (b"", done(), nlmsg(codec.NLMSG_ERROR, 0, b"\0\0")):
        with pytest.raises(genl.GenlError):
            genl.parse_ack(bad)
