"""Two real `Datapath`s wired over loopback UDP, each with a unix datagram socket as its "TUN".

Why: the drain functions only need an fd that keeps packet boundaries (a SOCK_DGRAM socketpair
does, like a TUN) and a UDP socket, so the whole forwarding path, counters and metrics can be
fed without root or namespaces (unit tests, `bench/udp/micro.py`). Node A owns 10.244.1.0/24,
node B 10.244.2.0/24; each routes the other's subnet to the other's loopback port.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from flanneld.backends.udp import core
from flanneld.backends.udp.datapath import Datapath, open_socket
from flanneld.backends.udp.tun import Tun

SUBNETS = ("10.244.1.0/24", "10.244.2.0/24")
MTU = 1472
VNET = bytes(10)


@dataclass
class Node:
    dp: Datapath
    pod: socket.socket  # the "kernel side" of the fake TUN: write = packet into flannel0
    vnet: bytes = VNET  # virtio-net header injected before each packet in offload mode

    def inject(self, pkt: bytes) -> None:
        self.pod.send((self.vnet if self.dp.tun.vnet_hdr else b"") + pkt)

    def take(self) -> list[bytes]:
        """Everything the datapath wrote into its TUN (vnet header stripped)."""
        out: list[bytes] = []
        while True:
            try:
                p = self.pod.recv(65536)
            except BlockingIOError:
                return out
            out.append(p[10:] if self.dp.tun.vnet_hdr else p)

    def close(self) -> None:
        self.dp.sock.close()
        self.dp.tun.close()
        self.pod.close()


def node(subnet: str, offload: bool) -> Node:
    tun_end, pod = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (tun_end, pod):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tun = Tun(fd=tun_end.detach(), name="fake0", vnet_hdr=offload, waker=pod)
    sock = open_socket("127.0.0.1", 0)
    return Node(Datapath(tun, sock, subnet, MTU, offload=offload), pod)


def pair(offload: bool = False) -> tuple[Node, Node]:
    a, b = node(SUBNETS[0], offload), node(SUBNETS[1], offload)
    a.dp.set_route(SUBNETS[1], "127.0.0.1", b.dp.sock.getsockname()[1])
    b.dp.set_route(SUBNETS[0], "127.0.0.1", a.dp.sock.getsockname()[1])
    return a, b


def udp_packet(src: str, dst: str, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4/UDP packet with valid header checksum (UDP checksum 0: none)."""
    total = 28 + len(payload)
    ip = bytearray(20)
    ip[0], ip[2], ip[3], ip[8], ip[9] = 0x45, total >> 8, total & 0xFF, ttl, core.PROTO_UDP
    ip[12:16] = socket.inet_aton(src)
    ip[16:20] = socket.inet_aton(dst)
    core.set_ipv4_header_checksum(ip)
    udp = (4000).to_bytes(2, "big") + (5000).to_bytes(2, "big") + (8 + len(payload)).to_bytes(
        2, "big") + b"\0\0"
    return bytes(ip) + udp + payload
