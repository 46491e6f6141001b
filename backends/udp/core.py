"""Sans-IO core of the udp backend: pure functions over IPv4 packets held in bytes-like objects.

Why: Go flannel's udp datapath (proxy.c) mixes packet logic with poll()/read()/sendto(); here the
logic is pure so it can be unit-tested with golden packets and fuzzed, and the asyncio loop in
`datapath.py` only moves bytes. Wire format (flannel's): the UDP payload is exactly one inner IPv4
packet. Beyond flannel: every received datagram is validated, its sender must hold a lease, and
its inner source must lie inside a subnet that sender leases (an outer source is easily forged).

Checksums use one trick throughout: the RFC 1071 ones'-complement sum of 16-bit words equals the
big-endian integer value of the data modulo 0xffff (because 2**16 == 1 mod 0xffff), and
``int.from_bytes`` plus ``%`` runs in C.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

IPV4_MIN_HEADER = 20
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
# ICMP types that are error messages: never answer them with another ICMP error (RFC 1122 3.2.2).
_ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_FRAG_NEEDED = 4
ICMP_TTL = 64  # TTL of the ICMP errors we write back into the TUN (flannel uses 10)
UDP_ENCAP_OVERHEAD = 28  # outer IPv4 (20) + UDP (8): TUN MTU = external MTU - 28


class DropReason(enum.IntEnum):
    """Why a packet was not forwarded; indexes the drop counter array."""

    TRUNCATED = 0  # shorter than 20 bytes or than the packet's own total length
    NOT_IPV4 = 1  # version nibble is not 4
    BAD_HEADER_LENGTH = 2  # IHL < 5, or header longer than the packet
    BAD_TOTAL_LENGTH = 3  # datagram longer than the IPv4 total length (trailing bytes)
    BAD_HEADER_CHECKSUM = 4
    SOURCE_NO_LEASE = 5  # underlay sender holds no lease (security beyond flannel)
    DESTINATION_NOT_LOCAL = 6  # received for an address outside our subnet
    NO_ROUTE = 7  # from TUN: no peer subnet holds the destination (ICMP net unreachable)
    TTL_EXPIRED = 8
    TOO_BIG = 9  # larger than the TUN MTU (ICMP frag needed when DF is set)
    SEND_FAILED = 10  # sendto/sendmsg to the underlay failed (e.g. socket buffer full)
    TUN_WRITE_FAILED = 11
    BAD_OFFLOAD = 12  # malformed virtio-net header / GSO packet from the TUN
    SOURCE_NOT_PEER_SUBNET = 13  # inner IPv4 source outside every subnet the sender leases


DROP_REASONS = tuple(DropReason)


def new_drop_counters() -> list[int]:
    """One counter per DropReason, indexed by its value (a plain list: cheapest to bump)."""
    return [0] * len(DROP_REASONS)


def drops_by_name(counters: list[int]) -> dict[str, int]:
    return {r.name.lower(): counters[r] for r in DROP_REASONS}


# ---------------------------------------------------------------------------------------------
# checksums


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 ones'-complement sum of `data` (odd length padded with a zero byte), folded.

    Returns a value in 0..0xffff; 0 only for all-zero data.
    """
    x = int.from_bytes(data, "big")
    if len(data) & 1:
        x <<= 8
    r = x % 0xFFFF
    if r == 0 and x:
        return 0xFFFF
    return r


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Internet checksum of `data` plus an already folded partial sum `initial`."""
    s = ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_header_checksum_ok(pkt: bytes | bytearray | memoryview, ihl: int) -> bool:
    return int.from_bytes(pkt[:ihl], "big") % 0xFFFF == 0


def set_ipv4_header_checksum(pkt: bytearray | memoryview, ihl: int = IPV4_MIN_HEADER) -> None:
    pkt[10] = 0
    pkt[11] = 0
    c = checksum(pkt[:ihl])
    pkt[10] = c >> 8
    pkt[11] = c & 0xFF


def pseudo_header_sum(src: bytes | memoryview, dst: bytes | memoryview, proto: int,
                      length: int) -> int:
    """Folded ones'-complement sum of the IPv4 pseudo header (for TCP/UDP checksums)."""
    s = ones_sum(bytes(src) + bytes(dst)) + proto + length
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


# ---------------------------------------------------------------------------------------------
# validation


def check_ipv4(pkt: bytes | bytearray | memoryview) -> DropReason | None:
    """Validate one IPv4 packet that must fill `pkt` exactly (flannel's wire: one per datagram).

    Returns None when valid, else the drop reason. Checks the header checksum too: the kernel
    would drop a bad one silently when we write it into the TUN; here it is counted.
    """
    n = len(pkt)
    if n < IPV4_MIN_HEADER:
        return DropReason.TRUNCATED
    b0 = pkt[0]
    if b0 >> 4 != 4:
        return DropReason.NOT_IPV4
    ihl = (b0 & 0x0F) << 2
    if ihl < IPV4_MIN_HEADER:
        return DropReason.BAD_HEADER_LENGTH
    total = (pkt[2] << 8) | pkt[3]
    if total > n:
        return DropReason.TRUNCATED
    if total < n:
        return DropReason.BAD_TOTAL_LENGTH
    if ihl > total:
        return DropReason.BAD_HEADER_LENGTH
    if int.from_bytes(pkt[:ihl], "big") % 0xFFFF:
        return DropReason.BAD_HEADER_CHECKSUM
    return None


def ipv4_dst(pkt: bytes | bytearray | memoryview) -> int:
    return int.from_bytes(pkt[16:20], "big")


@dataclass(frozen=True, slots=True)
class LocalSubnet:
    """Our lease's subnet as two ints: `dst & mask == network` means 'for us'."""

    network: int
    mask: int

    @classmethod
    def parse(cls, cidr: str | ipaddress.IPv4Network) -> LocalSubnet:
        net = ipaddress.IPv4Network(cidr)
        return cls(int(net.network_address), int(net.netmask))

    def contains(self, addr: int) -> bool:
        return addr & self.mask == self.network


def check_received(pkt: bytes | bytearray | memoryview, sender: str, routes: RouteTable,
                   local: LocalSubnet) -> DropReason | None:
    """Validate a datagram received from underlay host `sender` before it is written to the TUN.

    Order: lease first (cheapest, and an unleased sender learns nothing), then the IPv4 header,
    then the destination, which must lie in our own subnet, then the inner source, which must
    lie in a subnet `sender` leases: whoever can send from a leased address (or forge one) must
    not inject packets from anywhere else. The ICMP errors a peer's node sends come from its
    flannel0 address, <subnet>.0, which passes.
    """
    if sender not in routes.leased:
        return DropReason.SOURCE_NO_LEASE
    bad = check_ipv4(pkt)
    if bad is not None:
        return bad
    if int.from_bytes(pkt[16:20], "big") & local.mask != local.network:
        return DropReason.DESTINATION_NOT_LOCAL
    if not routes.holds(sender, int.from_bytes(pkt[12:16], "big")):
        return DropReason.SOURCE_NOT_PEER_SUBNET
    return None


# ---------------------------------------------------------------------------------------------
# TTL (RFC 1624)


def decrement_ttl(pkt: bytearray | memoryview) -> bool:
    """Decrement the TTL in place and patch the header checksum incrementally (RFC 1624 eqn 3).

    Returns False (packet untouched) when the TTL would reach zero. Unlike proxy.c, a TTL of 0
    is not wrapped to 255.
    """
    ttl = pkt[8]
    if ttl <= 1:
        return False
    old = (ttl << 8) | pkt[9]
    hc = (pkt[10] << 8) | pkt[11]
    # HC' = ~(~HC + ~m + m')
    s = (hc ^ 0xFFFF) + (old ^ 0xFFFF) + (old - 0x100)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    hc = s ^ 0xFFFF
    pkt[8] = ttl - 1
    pkt[10] = hc >> 8
    pkt[11] = hc & 0xFF
    return True


# ---------------------------------------------------------------------------------------------
# route table


def _ip_int(addr: str | ipaddress.IPv4Address) -> int:
    return int(ipaddress.IPv4Address(addr))


# An inner-source key no address matches (`addr & 0 == -1` never holds): the datapath's
# (mask, network) pairs, native order then network order, of a sender whose subnets cannot be
# one AND/compare (several leases, or none left); its datagrams go to `RouteTable.holds`.
NO_SOURCE = (0, -1, 0, -1)


class RouteTable:
    """Peer subnet -> underlay (host, port). One dict per prefix length, keyed by masked address.

    Flannel uses one SubnetLen per network, so the hot path is one `dst & mask` and one dict get;
    a second length (config change) costs one more probe. Lookups see either the old or the new
    state of a concurrent update, never a half-built one (each update replaces a dict entry).
    A change costs O(1) (plus the number of prefix lengths): `leased` and the per-host subnets
    follow each change, so thousands of routes are set without re-walking the table each time.
    """

    __slots__ = ("_hosts", "_masks", "_tables", "leased")

    def __init__(self) -> None:
        self._tables: dict[int, dict[int, tuple[str, int]]] = {}
        self._masks: tuple[tuple[int, dict[int, tuple[str, int]]], ...] = ()
        # underlay host -> the (network, mask) of each subnet routed to it (an ordered set)
        self._hosts: dict[str, dict[tuple[int, int], None]] = {}
        # underlay hosts holding a lease: received datagrams must come from one of them
        self.leased: set[str] = set()

    def _reindex(self) -> None:
        self._masks = tuple(
            (((1 << 32) - 1) ^ ((1 << (32 - plen)) - 1), t)
            for plen, t in sorted(self._tables.items(), reverse=True)
            if t
        )

    def _add(self, host: str, subnet: tuple[int, int]) -> None:
        self._hosts.setdefault(host, {})[subnet] = None
        self.leased.add(host)

    def _discard(self, host: str, subnet: tuple[int, int]) -> None:
        subnets = self._hosts.get(host)
        if subnets is None:
            return
        subnets.pop(subnet, None)
        if not subnets:
            del self._hosts[host]
            self.leased.discard(host)

    def sole_subnet(self, host: str) -> tuple[int, int] | None:
        """(network, mask) of the one subnet routed to `host`; None when it holds none or
        several (O(1): what the datapath's inline source check precomputes per sender)."""
        subnets = self._hosts.get(host)
        if subnets is None or len(subnets) != 1:
            return None
        return next(iter(subnets))

    def holds(self, host: str, addr: int) -> bool:
        """Whether `addr` lies in a subnet routed to `host` (any of them, not only the longest
        match). One probe per prefix length, as `lookup`; safe beside concurrent changes."""
        for mask, table in self._masks:
            peer = table.get(addr & mask)
            if peer is not None and peer[0] == host:
                return True
        return False

    def set(self, subnet: str | ipaddress.IPv4Network, host: str,
            port: int) -> tuple[str, int] | None:
        """Route `subnet` to (host, port); returns the route it replaced, if any."""
        net = ipaddress.IPv4Network(subnet)
        str(ipaddress.IPv4Address(host))  # validate
        table = self._tables.setdefault(net.prefixlen, {})
        key = int(net.network_address)
        held = (key, int(net.netmask))
        old = table.get(key)
        if old is None or old[0] != host:
            self._add(host, held)  # before the route: a new peer's datagrams are welcome first
        table[key] = (host, port)
        if old is not None and old[0] != host:
            self._discard(old[0], held)
        if old is None and len(table) == 1:
            self._reindex()
        return old

    def remove(self, subnet: str | ipaddress.IPv4Network) -> tuple[str, int] | None:
        """Delete the route of `subnet`; returns it (None: there was none)."""
        net = ipaddress.IPv4Network(subnet)
        table = self._tables.get(net.prefixlen)
        old = table.pop(int(net.network_address), None) if table is not None else None
        if old is not None:
            self._discard(old[0], (int(net.network_address), int(net.netmask)))
            if not table:
                self._reindex()
        return old

    def get(self, subnet: ipaddress.IPv4Network) -> tuple[str, int] | None:
        """The route of exactly ``subnet`` (host, port), or None; O(1)."""
        table = self._tables.get(subnet.prefixlen)
        return table.get(int(subnet.network_address)) if table is not None else None

    def delete(self, subnet: str | ipaddress.IPv4Network) -> bool:
        return self.remove(subnet) is not None

    def lookup(self, dst: int) -> tuple[str, int] | None:
        for mask, table in self._masks:
            peer = table.get(dst & mask)
            if peer is not None:
                return peer
        return None

    def items(self) -> Iterable[tuple[ipaddress.IPv4Network, tuple[str, int]]]:
        for plen, t in self._tables.items():
            for net, peer in t.items():
                yield ipaddress.IPv4Network((net, plen)), peer

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())


# ---------------------------------------------------------------------------------------------
# ICMP errors written back into the TUN

_IP_HDR = struct.Struct("!BBHHHBBH4s4s")
_ICMP_HDR = struct.Struct("!BBHHH")


def icmp_error_allowed(pkt: bytes | bytearray | memoryview) -> bool:
    """RFC 1122: no ICMP error about an ICMP error, a non-first fragment or a short packet."""
    if len(pkt) < IPV4_MIN_HEADER or pkt[0] >> 4 != 4:
        return False
    ihl = (pkt[0] & 0x0F) << 2
    if ihl < IPV4_MIN_HEADER or len(pkt) < ihl:
        return False
    if ((pkt[6] & 0x1F) << 8) | pkt[7]:
        return False  # fragment offset != 0
    if pkt[16] >= 224:
        return False  # multicast / broadcast-class destination
    return not (pkt[9] == PROTO_ICMP and len(pkt) > ihl and pkt[ihl] in _ICMP_ERROR_TYPES)


def build_icmp_unreachable(offender: bytes | bytearray | memoryview, code: int,
                           next_hop_mtu: int = 0) -> bytes | None:
    """ICMP destination unreachable (type 3) about `offender`, to be written into the TUN.

    Like proxy.c's send_net_unreachable, the error claims to come from the offender's
    destination (our TUN address would be a martian source on input) and goes back to its
    source; it quotes the offender's IP header plus 8 bytes (RFC 792). Code 4 (fragmentation
    needed) carries `next_hop_mtu` (RFC 1191). Returns None when no error may be sent.
    """
    if not icmp_error_allowed(offender):
        return None
    ihl = (offender[0] & 0x0F) << 2
    quote = bytes(offender[: ihl + 8])
    icmp = bytearray(_ICMP_HDR.pack(ICMP_DEST_UNREACH, code, 0, 0, next_hop_mtu) + quote)
    c = checksum(icmp)
    icmp[2] = c >> 8
    icmp[3] = c & 0xFF
    ip = bytearray(_IP_HDR.pack(0x45, 0, IPV4_MIN_HEADER + len(icmp), 0, 0, ICMP_TTL, PROTO_ICMP,
                                0, bytes(offender[16:20]), bytes(offender[12:16])))
    set_ipv4_header_checksum(ip)
    return bytes(ip + icmp)


def build_net_unreachable(offender: bytes | bytearray | memoryview) -> bytes | None:
    return build_icmp_unreachable(offender, ICMP_NET_UNREACH)


def build_frag_needed(offender: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
    return build_icmp_unreachable(offender, ICMP_FRAG_NEEDED, mtu)


def dont_fragment(pkt: bytes | bytearray | memoryview) -> bool:
    return bool(pkt[6] & 0x40)


# ---------------------------------------------------------------------------------------------
# the two directions as pure decisions (the datapath inlines the same steps)


@dataclass(slots=True)
class Verdict:
    """What to do with a packet read from the TUN."""

    peer: tuple[str, int] | None = None  # send the (TTL-patched) packet to this underlay peer
    reply: bytes | None = None  # ICMP error to write back into the TUN
    drop: DropReason | None = None


def from_tun(pkt: bytearray | memoryview, routes: RouteTable, mtu: int) -> Verdict:
    """Decide the fate of one packet read from the TUN (patches the TTL in place when sent)."""
    n = len(pkt)
    if n < IPV4_MIN_HEADER:
        return Verdict(drop=DropReason.TRUNCATED)
    if pkt[0] >> 4 != 4:
        return Verdict(drop=DropReason.NOT_IPV4)
    peer = routes.lookup(int.from_bytes(pkt[16:20], "big"))
    if peer is None:
        return Verdict(reply=build_net_unreachable(pkt), drop=DropReason.NO_ROUTE)
    if n > mtu:
        reply = build_frag_needed(pkt, mtu) if dont_fragment(pkt) else None
        return Verdict(reply=reply, drop=DropReason.TOO_BIG)
    if not decrement_ttl(pkt):
        return Verdict(drop=DropReason.TTL_EXPIRED)
    return Verdict(peer=peer)


def accept_received(pkt: bytes | bytearray | memoryview, sender: str, routes: RouteTable,
                    local: LocalSubnet, drops: list[int]) -> bool:
    """check_received plus drop accounting: True when `pkt` may be written into the TUN."""
    bad = check_received(pkt, sender, routes, local)
    if bad is None:
        return True
    drops[bad] += 1
    return False
