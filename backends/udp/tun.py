"""Opening the udp backend's TUN device (`flannel0`) the way Go flannel does, plus offloads.

Why: Go flannel opens /dev/net/tun with TUNSETIFF(IFF_TUN|IFF_NO_PI) and sets the MTU to the
external MTU - 28. We do the same; optionally the device also gets IFF_VNET_HDR and
TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4) so the kernel hands us 64 KB TCP super-packets (the
datapath re-segments them, so the wire is unchanged). Addresses and routes are not set here:
that is netlink work (`device.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
VNET_HDR_LEN = 10  # struct virtio_net_hdr (no num_buffers)
IFNAMSIZ = 16
DEFAULT_NAME = "flannel0"
ETH_P_IP = 0x0800
WAKE_PACKET = bytes(20)  # IP version 0: never forwarded (and not counted while stopping)


@dataclass(frozen=True, slots=True)
class Tun:
    fd: int
    name: str
    vnet_hdr: bool  # every read/write starts with a 10-byte virtio_net_hdr
    # sends a packet *out of* the device, i.e. into our own read queue: ends a blocked read()
    waker: socket.socket | None = None

    def wake(self) -> None:
        if self.waker is not None:
            with contextlib.suppress(OSError):
                self.waker.send(WAKE_PACKET)

    def close(self) -> None:
        if self.waker is not None:
            self.waker.close()
        os.close(self.fd)


def open_waker(name: str) -> socket.socket:
    """An AF_PACKET socket on TUN `name`, opened in the TUN's namespace (needs CAP_NET_RAW).

    Protocol 0: send-only (what it sends reaches the TUN's reader as is). Bound to ETH_P_IP it
    would also be a receive tap that nobody reads: every packet written into the TUN would be
    delivered to it as well, and cloned by ip_rcv as a shared skb, on the forwarding path."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    try:
        s.bind((name, 0))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def tun_mtu(external_mtu: int) -> int:
    """flannel's udp MTU: the external interface MTU minus outer IPv4 (20) and UDP (8)."""
    return external_mtu - 28


def _ifreq(name: str, fmt: str = "H", *values: int) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"bad interface name {name!r}")
    return struct.pack(f"{IFNAMSIZ}s{fmt}", raw, *values).ljust(40, b"\0")


def open_tun(name: str = DEFAULT_NAME, *, offload: bool = False, mtu: int | None = None,
             up: bool = True) -> Tun:
    """Create (or attach to) TUN `name`, non-blocking. `offload` adds IFF_VNET_HDR + TSO4/CSUM."""
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        res = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, "H", flags))
        actual = res[:IFNAMSIZ].rstrip(b"\0").decode()
        if offload:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
        if mtu is not None:
            set_mtu(actual, mtu)
        if up:
            set_up(actual)
        waker = open_waker(actual)
    except BaseException:
        os.close(fd)
        raise
    return Tun(fd=fd, name=actual, vnet_hdr=offload, waker=waker)


def set_mtu(name: str, mtu: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFMTU, _ifreq(name, "i", mtu))


def set_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(name, "H", 0))
        (flags,) = struct.unpack_from("H", res, IFNAMSIZ)
        fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(name, "H", flags | IFF_UP))
