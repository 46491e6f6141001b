"""The kernel driver: a ``wireguard`` link made over rtnetlink, configured over WireGuard's
generic netlink family.

Two small blocking netlink sockets, used from a worker thread (``asyncio.to_thread``), one
request at a time (an asyncio lock): the generic netlink one stays open (its family id is
resolved once, ``genl.encode_getfamily``), a NETLINK_ROUTE one is opened for each
``ensure_device``.  Answers are matched by sequence number, so a late answer to a request that
timed out is skipped, never taken for the next one's.

- ``configure``: ``genl.encode_set_chunks``, each message sent after the previous one's ack; a
  refusal stops there (WireguardDriverError naming the device and the kernel's reason).
- ``state``: ``genl.encode_get`` (a dump), the answers collected up to NLMSG_DONE; a dump the
  kernel flags as interrupted (peers changed meanwhile) is asked again.
- ``ensure_device``: RTM_NEWLINK with kind ``wireguard`` and MTU ``DEFAULT_MTU`` (the backend
  sets the real MTU, address and up afterwards); EEXIST: attach, after checking the existing
  link is a WireGuard one.
- A kernel device does not die by itself: ``on_lost`` callbacks are kept but never called (a
  link an operator deleted is found by the backend's repair).

The sockets can be injected (``genl_socket`` / ``rtnl_socket`` factories) so the message flow
is tested without the module, e.g. against an AF_UNIX datagram socketpair.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import itertools
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from flanneld import netlink_codec as codec
from flanneld.backends.wireguard import genl
from flanneld.backends.wireguard.driver import WireguardDriverError
from flanneld.backends.wireguard.model import DeviceConfig, DeviceState

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
DEFAULT_MTU = 1420  # WireGuard's own default; the backend sets the real one
TIMEOUT = 5.0
RECV_SIZE = 1 << 16  # the kernel's dump messages are at most 32 KiB
DUMP_RETRIES = 5

NO_MODULE = ("could not create wireguard interface: operation not supported (no WireGuard "
             "kernel module; use --wireguard-driver userspace or auto)")

SocketFactory = Callable[[], socket.socket]
P = ParamSpec("P")
T = TypeVar("T")


def _netlink_socket(protocol: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):  # short acks, with the kernel's reason
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, opt, 1)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def genl_socket() -> socket.socket:
    return _netlink_socket(NETLINK_GENERIC)


def rtnl_socket() -> socket.socket:
    return _netlink_socket(NETLINK_ROUTE)


def _split(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, the whole message) of each netlink message in a datagram."""
    offset = 0
    while offset + codec.NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _ = codec.NLMSGHDR.unpack_from(data, offset)
        if length < codec.NLMSGHDR.size or offset + length > len(data):
            return
        yield mtype, flags, seq, data[offset: offset + length]
        offset += (length + 3) & ~3


def _seq_of(message: bytes) -> int:
    seq: int = codec.NLMSGHDR.unpack_from(message)[3]
    return seq


@dataclass(slots=True)
class _Answer:
    """What the kernel sent for one request: its messages (the terminating one last) and the
    errno of its NLMSG_ERROR (0: an ack, or a dump's NLMSG_DONE)."""

    messages: list[bytes] = field(default_factory=list)
    errno: int = 0
    detail: str = ""


def _exchange(sock: socket.socket, request: bytes, what: str, dump: bool = False) -> _Answer:
    """Send ``request`` and read its answers up to its ack / error (a dump: NLMSG_DONE or an
    error).  Blocking, under the socket's timeout."""
    seq = _seq_of(request)
    try:
        sock.send(request)
    except OSError as exc:
        raise WireguardDriverError(f"netlink: cannot send the {what}: "
                                   f"{exc.strerror or exc}") from None
    answer = _Answer()
    while True:
        try:
            data, _, msg_flags, _ = sock.recvmsg(RECV_SIZE)
        except TimeoutError:
            raise WireguardDriverError(f"netlink: no answer to the {what} within "
                                       f"{sock.gettimeout():g} s") from None
        except OSError as exc:
            raise WireguardDriverError(f"netlink: reading the answer to the {what}: "
                                       f"{exc.strerror or exc}") from None
        if msg_flags & socket.MSG_TRUNC:
            raise WireguardDriverError(f"netlink: an answer to the {what} was larger than "
                                       f"{RECV_SIZE} bytes")
        if not data:
            raise WireguardDriverError(f"netlink: the socket closed before the {what} was "
                                       "answered")
        for mtype, _, rseq, message in _split(data):
            if rseq != seq:
                continue  # the late answer of a request that timed out
            answer.messages.append(message)
            if mtype == codec.NLMSG_ERROR:
                answer.errno, answer.detail = genl.parse_ack_detail(message)
                return answer
            if dump and mtype == codec.NLMSG_DONE:
                return answer


def _with_detail(detail: str) -> str:
    return f" ({detail})" if detail else ""


class KernelDriver:
    """WireGuard devices of the kernel module (see the module's doc)."""

    name = "kernel"

    def __init__(self, *, genl_socket: SocketFactory = genl_socket,
                 rtnl_socket: SocketFactory = rtnl_socket, timeout: float = TIMEOUT,
                 mtu: int = DEFAULT_MTU) -> None:
        self._open_genl = genl_socket
        self._open_rtnl = rtnl_socket
        self.timeout = timeout
        self.mtu = mtu
        self._sock: socket.socket | None = None
        self._family: int | None = None
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()
        self._callbacks: list[Callable[[str], None]] = []

    # -- the Driver interface ------------------------------------------------------------------

    async def ensure_device(self, ifname: str) -> bool:
        return await asyncio.to_thread(self._ensure_device, ifname)

    async def configure(self, ifname: str, config: DeviceConfig) -> None:
        async with self._lock:
            await asyncio.to_thread(self._locked, self._configure, ifname, config)

    async def state(self, ifname: str) -> DeviceState:
        async with self._lock:
            return await asyncio.to_thread(self._locked, self._state, ifname)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)  # a kernel device is not lost by itself

    async def close(self) -> None:
        async with self._lock:
            self._reset()

    # -- generic netlink ---------------------------------------------------------------------------

    def family_id(self) -> int:
        """The WireGuard family's id (resolving it opens the socket); blocking.
        genl.GenlError (errno ENOENT) when the kernel has no WireGuard."""
        self._socket()
        assert self._family is not None
        return self._family

    def _socket(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            sock = self._open_genl()
        except OSError as exc:
            raise WireguardDriverError(f"cannot open a generic netlink socket: "
                                       f"{exc.strerror or exc}") from None
        try:
            sock.settimeout(self.timeout)
            answer = _exchange(sock, genl.encode_getfamily(next(self._seq)),
                               "WireGuard family lookup")
            self._family = genl.parse_family_id(b"".join(answer.messages))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        log.debug("WireGuard generic netlink family id %d", self._family)
        return sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._family = None, None

    def _locked(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn``; a transport failure (not a refusal) drops the socket, so the next
        request starts on a fresh one."""
        try:
            return fn(*args, **kwargs)
        except genl.GenlError as exc:
            if exc.errno is None:
                self._reset()
            raise
        except BaseException:
            self._reset()
            raise

    def _configure(self, ifname: str, config: DeviceConfig) -> None:
        sock = self._socket()
        assert self._family is not None
        chunks = genl.encode_set_chunks(self._family, next(self._seq), ifname, config)
        # the chunks use seq, seq + 1, ...: keep our counter past them
        self._seq = itertools.count(_seq_of(chunks[-1]) + 1)
        for i, chunk in enumerate(chunks, start=1):
            part = f" (message {i} of {len(chunks)})" if len(chunks) > 1 else ""
            answer = _exchange(sock, chunk, f"configuration of {ifname}{part}")
            if answer.errno:
                raise genl.GenlError(
                    f"wireguard device {ifname}: the kernel refused the configuration{part}: "
                    f"{os.strerror(answer.errno)}{_with_detail(answer.detail)}", answer.errno)

    def _state(self, ifname: str) -> DeviceState:
        for attempt in range(1, DUMP_RETRIES + 1):
            sock = self._socket()
            assert self._family is not None
            answer = _exchange(sock, genl.encode_get(self._family, next(self._seq), ifname),
                               f"dump of {ifname}", dump=True)
            try:
                return genl.parse_get(answer.messages)
            except genl.GenlError as exc:
                if exc.errno == errno_mod.EINTR and attempt < DUMP_RETRIES:
                    continue  # the device changed during the dump: ask again
                raise genl.GenlError(f"wireguard device {ifname}: {exc}", exc.errno) from None
        raise AssertionError("unreachable")

    # -- rtnetlink ---------------------------------------------------------------------------------

    def _ensure_device(self, ifname: str) -> bool:
        try:
            sock = self._open_rtnl()
        except OSError as exc:
            raise WireguardDriverError(f"cannot open a rtnetlink socket: "
                                       f"{exc.strerror or exc}") from None
        with sock:
            sock.settimeout(self.timeout)
            answer = _exchange(sock, genl.encode_newlink(next(self._seq), ifname, self.mtu),
                               f"creation of {ifname}")
            if answer.errno == 0:
                log.info("created the WireGuard device %s", ifname)
                return True
            if answer.errno == errno_mod.EEXIST:
                self._check_kind(sock, ifname)
                return False
            if answer.errno == errno_mod.EOPNOTSUPP:
                raise genl.GenlError(NO_MODULE, answer.errno)
            raise genl.GenlError(
                f"could not create wireguard interface {ifname}: {os.strerror(answer.errno)}"
                f"{_with_detail(answer.detail)}", answer.errno)

    def _check_kind(self, sock: socket.socket, ifname: str) -> None:
        """The existing ``ifname`` must be a kernel WireGuard link (not, say, the TUN device
        of a wireguard-go)."""
        request = codec.frame(codec.link_get_request(ifname), next(self._seq))
        answer = _exchange(sock, request, f"lookup of {ifname}")
        if answer.errno == errno_mod.ENODEV:  # deleted meanwhile: the caller tries again
            raise genl.GenlError(f"wireguard interface {ifname} disappeared while being made",
                                 answer.errno)
        kind = ""
        for message in answer.messages:
            mtype = codec.NLMSGHDR.unpack_from(message)[1]
            if mtype == codec.RTM_NEWLINK:
                link = codec.parse_link(message[codec.NLMSGHDR.size:])
                kind = link.kind if link is not None else ""
        if kind != "wireguard":
            raise WireguardDriverError(
                f"interface {ifname} exists and is not a kernel WireGuard device (kind "
                f"{kind or 'unknown'}): delete it, or use --wireguard-driver userspace")


async def kernel_support(genl_socket: SocketFactory = genl_socket,
                         answer_within: float = 2.0) -> str | None:
    """None when the kernel has WireGuard (its generic netlink family resolves: the module is
    loaded, or loadable, which the lookup does); else why not, for the log."""
    driver = KernelDriver(genl_socket=genl_socket, timeout=answer_within)
    try:
        await asyncio.to_thread(driver.family_id)
    except WireguardDriverError as exc:
        return str(exc)
    finally:
        await driver.close()
    return None
