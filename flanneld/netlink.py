"""The netlink applier: the only module of the project that talks to the kernel's rtnetlink.

Every message comes from ``flanneld.netlink_codec`` (pure, golden-tested); this module owns the
sockets only.  One transport for everything, a plain ``AF_NETLINK`` socket (no pyroute2, whose
import alone loads ~160 modules and ~11 MB):

* The ops (route, neighbour, fdb, address, and the few device ops) are pipelined: up to a
  chunk of requests (512 by default, bounded by the receive buffer) travel in ONE datagram; only
  the last request of a chunk asks for an ack, so the kernel answers successes with silence and
  each failure with an NLMSG_ERROR carrying its sequence number.  rtnetlink handles the datagram
  synchronously inside ``send()``, in order, so when the chunk's final ack arrives every earlier
  error has been queued already, and a device created early in a datagram exists for the routes
  after it.  pyroute2 one request at a time needed 7.6 s for 15000 objects (``ip -batch``:
  0.43 s), and pyroute2 with thousands of requests in flight hangs; this path stays at a bounded
  number in flight and costs a few microseconds of Python per object.  Should acks be lost
  anyway (ENOBUFS), the chunk is replayed with an ack per request: every op is idempotent, so a
  replay is sound.
* Observation is dumps (routes, neighbours, fdb, addresses, links) and pipelined gets (route
  get, link get), for AF_INET by default or AF_INET6 when asked.

The raw socket is blocking and runs in a worker thread (``asyncio.to_thread``) so the event loop
keeps serving etcd watches while the kernel installs thousands of routes.

Idempotence: Replace uses NLM_F_CREATE|NLM_F_REPLACE (never EEXIST); a Delete that finds nothing
(ESRCH, ENOENT, ENODEV, EADDRNOTAVAIL) is ``already_gone``; a CreateVxlan of an existing name is
``already_present``.  Each op yields an ``Outcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as errno_mod
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

from flanneld.errors import FlannelError
from flanneld.netlink_codec import (
    AF_BRIDGE,
    DEFAULT_ROUTE_METRIC,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFLA_IFNAME,
    IFLA_STATS64,
    NDA_DST,
    NDA_LLADDR,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGERR_ATTR_MSG,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BOOT,
    Request,
    addr_dump,
    encode_op,
    fdb_dump,
    frame,
    link_dump,
    link_get_request,
    messages,
    neigh_dump,
    outcome_for,
    parse_address,
    parse_error,
    parse_fdb,
    parse_link,
    parse_link_counters,
    parse_neighbour,
    parse_route,
    parse_unreachable,
    route_dump,
    route_get_request,
)
from flanneld.netops import (
    AF_INET,
    AF_INET6,
    RT_TABLE_MAIN,
    Address,
    FdbEntry,
    InterfaceInfo,
    IPAddress,
    KernelObject,
    LinkInfo,
    Neighbour,
    Op,
    Outcome,
    Route,
    UnreachableRoute,
)

__all__ = [
    "AF_BRIDGE", "AF_INET", "AF_INET6", "IFA_ADDRESS", "IFA_LOCAL", "IFLA_IFNAME", "IFLA_STATS64",
    "NDA_DST", "NDA_LLADDR", "NETLINK_CAP_ACK", "NETLINK_EXT_ACK", "NETLINK_ROUTE",
    "NLMSGERR_ATTR_MSG", "NLMSG_DONE", "NLMSG_ERROR", "NLM_F_ACK", "NLM_F_ACK_TLVS",
    "NLM_F_CREATE", "NLM_F_DUMP", "NLM_F_DUMP_INTR", "NLM_F_MULTI", "NLM_F_REPLACE",
    "NLM_F_REQUEST", "NTF_SELF", "NUD_PERMANENT", "RTA_DST", "RTA_GATEWAY", "RTA_OIF",
    "RTA_PRIORITY", "RTA_TABLE", "RTM_DELADDR", "RTM_DELNEIGH", "RTM_DELROUTE", "RTM_GETADDR",
    "RTM_GETLINK", "RTM_GETNEIGH", "RTM_GETROUTE", "RTM_NEWADDR", "RTM_NEWLINK", "RTM_NEWNEIGH",
    "RTM_NEWROUTE", "RTNH_F_ONLINK", "RTN_UNICAST", "RTPROT_BOOT", "RT_SCOPE_LINK",
    "RT_SCOPE_NOWHERE", "RT_SCOPE_UNIVERSE", "SOL_NETLINK", "SO_RCVBUFFORCE", "SO_SNDBUFFORCE",
    "KernelError", "Netlink", "RawRtnl", "encode_op", "link_counters", "object_kinds",
    "outcome_for", "parse_address", "parse_fdb", "parse_neighbour", "parse_route",
]


T = TypeVar("T")
K = TypeVar("K", Route, Neighbour, FdbEntry)
# Objects by key (e.g. what a repair wants): an observed answer equal to one is returned as it.
Known = Mapping[tuple[Any, ...], KernelObject]


class KernelError(FlannelError):
    """A netlink request the kernel refused, or a transport failure, with the errno."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


# --- socket options (linux/netlink.h, asm-generic/socket.h) --------------------------------
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)


# --- device counters, read in the caller's own network namespace ------------------------

def link_counters(ifname: str) -> dict[str, int] | None:
    """The kernel's 64-bit counters of a device, asked over rtnetlink (blocking, ~0.1 ms).

    Unlike /sys/class/net, which shows the namespace sysfs was mounted in, netlink answers for
    the namespace this process lives in.  None when the device does not exist (yet).
    """
    with _netlink_socket() as sock:
        sock.settimeout(2.0)
        sock.send(frame(link_get_request(ifname), seq=1, ack=False))
        data = sock.recv(65536)
    for mtype, _, _, body in messages(data):
        return parse_link_counters(body) if mtype == RTM_NEWLINK else None  # else ENODEV
    return None


# --- the raw pipelined socket (blocking; used from a worker thread) ------------------------

def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise KernelError(f"setns({path}): {os.strerror(err)}", err)
    finally:
        os.close(fd)


def _netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/var/run/netns/{netns}"


def _open_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket; inside ``netns`` when given (a thread enters it, then exits)."""
    if netns is None:
        return _netlink_socket()
    box: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            _setns(_netns_path(netns))
            box.append(_netlink_socket())
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    worker = threading.Thread(target=enter_and_open, name="netns-socket")
    worker.start()
    worker.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class DumpReader:
    """The answers to one dump request, read datagram by datagram (the blocking reader and
    the loop-driven one share it): answers of other requests (a dump that was cancelled) are
    skipped, ``done`` at NLMSG_DONE, ``interrupted`` when the kernel flagged the dump
    inconsistent (the caller asks again), a kernel error raised as KernelError."""

    def __init__(self, mtype: int, seq: int) -> None:
        self.mtype, self.seq = mtype, seq
        self.done = self.interrupted = False

    def answers(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        for rtype, flags, rseq, rbody in messages(data):
            if rseq != self.seq:
                continue
            self.interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if rtype == NLMSG_DONE:
                self.done = True
            elif rtype == NLMSG_ERROR:
                err, msg = parse_error(rbody, flags)
                if err:
                    raise KernelError(f"netlink dump {self.mtype}: {msg or os.strerror(err)}", err)
                self.done = True
            else:
                yield rtype, rbody


class RawRtnl:
    """Blocking rtnetlink socket with pipelined requests; not thread-safe (callers serialize)."""

    RECV_TIMEOUT = 10.0

    def __init__(self, netns: str | None = None, chunk: int = 512) -> None:
        self.sock = _open_socket(netns)
        for opt, fallback, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20),
                                    (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, fallback, size)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
        self.sock.bind((0, 0))
        self.sock.settimeout(self.RECV_TIMEOUT)
        self.pid = self.sock.getsockname()[0]
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # one queued error costs ~1.5 KB of receive buffer (skb truesize + ext-ack text)
        self.chunk = max(1, min(chunk, rcvbuf // 1536))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def execute(self, requests: Sequence[tuple[int, int, bytes]],
                ack_each: bool = False) -> list[tuple[int, str]]:
        """Send requests pipelined; one (errno, kernel message) per request, errno 0 = ok.

        ``ack_each`` asks an ack of every request (the bench compares both ways)."""
        results: list[tuple[int, str]] = [(0, "")] * len(requests)
        for start in range(0, len(requests), self.chunk):
            self._chunk(requests, start, min(start + self.chunk, len(requests)), results,
                        ack_each=ack_each)
        return results

    def _chunk(self, requests: Sequence[tuple[int, int, bytes]], start: int, stop: int,
               results: list[tuple[int, str]], ack_each: bool) -> None:
        base = self.seq + 1
        datagram = b"".join(
            frame(requests[i], base + i - start, self.pid, ack=ack_each or i == stop - 1)
            for i in range(start, stop))
        self.seq = base + (stop - start) - 1
        last = self.seq
        pending = set(range(base, last + 1)) if ack_each else {last}
        self.sock.send(datagram)
        try:
            while pending:
                data = self.sock.recv(1 << 16)
                for mtype, flags, seq, body in messages(data):
                    if mtype == NLMSG_ERROR and base <= seq <= last:
                        results[start + seq - base] = parse_error(body, flags)
                        pending.discard(seq)
        except OSError as exc:
            if exc.errno != errno_mod.ENOBUFS or ack_each:
                raise KernelError(f"netlink receive failed: {exc}", exc.errno or 0) from None
            # Acks were dropped: replay the chunk, acking every request (ops are idempotent).
            self._drain()
            for sub in range(start, stop, 32):
                self._chunk(requests, sub, min(sub + 32, stop), results, ack_each=True)

    def _drain(self) -> None:
        self.sock.settimeout(0.05)
        try:
            while True:
                self.sock.recv(1 << 16)
        except OSError:
            pass
        finally:
            self.sock.settimeout(self.RECV_TIMEOUT)

    def dump(self, mtype: int, body: bytes) -> list[tuple[int, bytes]]:
        """A NLM_F_DUMP request; (type, body) of every answer. Retries an interrupted dump."""
        for _ in range(5):
            self.seq += 1
            seq = self.seq
            self.sock.send(frame((mtype, NLM_F_DUMP, body), seq, self.pid, ack=False))
            out: list[tuple[int, bytes]] = []
            reader = DumpReader(mtype, seq)
            while not reader.done:
                out.extend(reader.answers(self.sock.recv(1 << 20)))
            if not reader.interrupted:
                return out
        raise KernelError(f"netlink dump {mtype} kept being interrupted", errno_mod.EINTR)

    def query(self, requests: Sequence[tuple[int, int, bytes]]
              ) -> list[tuple[int, str, list[tuple[int, bytes]]]]:
        """Non-dump gets, pipelined, each acked: (errno, kernel message, answers) per request."""
        results: list[tuple[int, str, list[tuple[int, bytes]]]] = []
        for start in range(0, len(requests), self.chunk):
            part = requests[start: start + self.chunk]
            base = self.seq + 1
            buf = b"".join(frame(r, base + i, self.pid) for i, r in enumerate(part))
            self.seq = base + len(part) - 1
            answers: list[list[tuple[int, bytes]]] = [[] for _ in part]
            errors: list[tuple[int, str]] = [(0, "")] * len(part)
            pending = set(range(base, self.seq + 1))
            self.sock.send(buf)
            while pending:
                for mtype, flags, seq, body in messages(self.sock.recv(1 << 16)):
                    if not base <= seq <= self.seq:
                        continue
                    if mtype == NLMSG_ERROR:
                        errors[seq - base] = parse_error(body, flags)
                        pending.discard(seq)
                    else:
                        answers[seq - base].append((mtype, body))
            results.extend((err, msg, got) for (err, msg), got in zip(errors, answers,
                                                                      strict=True))
        return results

    def route_get(self, dsts: Sequence[IPAddress]) -> list[Route | None]:
        """The kernel's route lookup (``ip route get``) for each address, pipelined."""
        found: list[Route | None] = []
        for _, _, answers in self.query([route_get_request(d) for d in dsts]):
            parsed = next((p for mtype, body in answers if mtype == RTM_NEWROUTE
                           and (p := parse_route(body)) is not None), None)
            found.append(parsed[0] if parsed else None)
        return found


# --- the async facade the backends use ------------------------------------------------------

class Netlink:
    """Applier and observer for one network namespace (None: the daemon's own).

    Observation takes ``family`` (AF_INET, the default, or AF_INET6); route lookups take the
    family of each address asked.

    Dumps go over a socket of their own, so a lease event's ops never wait behind a full
    pass's dump of 15000 objects; everything else (ops, lookups) shares one socket whose lock
    serves calls first come, first served, so ops reach the kernel in the order planned."""

    def __init__(self, netns: str | None = None, chunk: int = 512,
                 on_outcomes: Callable[[Sequence[Outcome]], None] | None = None) -> None:
        """``on_outcomes`` sees every applied batch (the daemon counts ops by kind/result)."""
        self.netns = netns
        self._chunk = chunk
        self.on_outcomes = on_outcomes
        self._raw: RawRtnl | None = None
        self._lock = asyncio.Lock()
        self._dump_raw: RawRtnl | None = None
        self._dump_lock = asyncio.Lock()

    async def __aenter__(self) -> Netlink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._dump_raw is not None:
            self._dump_raw.close()
            self._dump_raw = None

    async def _open(self) -> RawRtnl:
        """A socket in our namespace (opened in a thread that enters it)."""
        return await asyncio.to_thread(RawRtnl, self.netns, self._chunk)

    async def _ops_socket(self) -> RawRtnl:
        """The socket of ops and lookups, opened on first use; the caller holds ``_lock``."""
        if self._raw is None:
            self._raw = await self._open()
        return self._raw

    async def _raw_call(self, fn_name: str, *args: Any) -> Any:
        async with self._lock:
            raw = await self._ops_socket()
            return await asyncio.to_thread(getattr(raw, fn_name), *args)

    PARSE_STEP = 128  # answers parsed between two turns of the loop (~1 ms)

    async def _dump(self, request: Request, parse: Callable[[bytes], T | None]) -> list[T]:
        """A dump on its own non-blocking socket, driven by the loop, answers parsed as they
        come (``parse`` returns None for what the caller does not keep), PARSE_STEP at a time.

        Why not a worker thread: the kernel builds a dump in the reads of it (a 64 KiB read:
        ~600 routes, ~5 ms to parse), so here the loop turns between reads and every
        PARSE_STEP answers, and a lease event waits ~1 ms at most.  A thread parsing the whole
        dump (5000 peers: ~20 ms) contends with the loop for the GIL instead, and each of an
        event's syscalls then waits up to the 5 ms switch interval.  Retries an interrupted
        dump."""
        mtype, _, body = request
        loop = asyncio.get_running_loop()
        async with self._dump_lock:
            if self._dump_raw is None:
                raw = await self._open()
                raw.sock.setblocking(False)
                self._dump_raw = raw
            raw = self._dump_raw
            for _ in range(5):
                raw.seq += 1
                seq = raw.seq
                await loop.sock_sendall(raw.sock, frame((mtype, NLM_F_DUMP, body), seq, raw.pid,
                                                        ack=False))
                out: list[T] = []
                reader = DumpReader(mtype, seq)
                while not reader.done:
                    async with asyncio.timeout(RawRtnl.RECV_TIMEOUT):
                        data = await loop.sock_recv(raw.sock, 1 << 16)
                    for n, (_, rbody) in enumerate(reader.answers(data), 1):
                        if n % self.PARSE_STEP == 0:
                            await asyncio.sleep(0)
                        if (x := parse(rbody)) is not None:
                            out.append(x)
                    await asyncio.sleep(0)  # sock_recv returns without a loop turn when data waits
                if not reader.interrupted:
                    return out
            raise KernelError(f"netlink dump {mtype} kept being interrupted", errno_mod.EINTR)

    # -- apply --

    INLINE_OPS = 32  # batches up to this size are sent from the loop's own thread

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        """Execute ops in order; one Outcome per op, never raises for a refused op."""
        outcomes: list[Outcome] = []
        if ops:
            requests = [encode_op(op) for op in ops]
            async with self._lock:
                raw = await self._ops_socket()
                if len(requests) <= self.INLINE_OPS:
                    # The kernel handles rtnetlink requests as it receives them: a lease
                    # event's few ops are answered in ~0.1 ms, less than a hop to a worker
                    # thread costs when the loop is busy (up to the 5 ms GIL interval each way).
                    results = raw.execute(requests)
                else:
                    results = await asyncio.to_thread(raw.execute, requests)
            outcomes = [outcome_for(op, err, msg)
                        for op, (err, msg) in zip(ops, results, strict=True)]
        if self.on_outcomes is not None and outcomes:
            self.on_outcomes(outcomes)
        return outcomes

    # -- observe --

    async def routes(self, table: int = RT_TABLE_MAIN, family: int = AF_INET,
                     known: Known | None = None) -> list[Route]:
        """Unicast routes of ``table`` with the family's default metric (the ones a planner may
        own: 0 for IPv4; for IPv6 1024, what the kernel gives a route added without one).

        ``known`` (here and in ``neighbours`` and ``fdb``): objects by key, e.g. what a repair
        wants; an answer equal to one of them is returned as that object, so a dump of 15000
        objects that are as wanted costs the list, not 15000 new objects."""
        metric0 = DEFAULT_ROUTE_METRIC[family]

        def parse(body: bytes) -> Route | None:
            p = parse_route(body)
            if p is None or p[1] != metric0 or p[0].table != table or p[0].family != family:
                return None
            return _as_known(p[0], known)

        return await self._dump(route_dump(family), parse)

    async def _route_dump(self, family: int) -> list[tuple[Route, int]]:
        def parse(body: bytes) -> tuple[Route, int] | None:
            p = parse_route(body)
            return p if p is not None and p[0].family == family else None

        return await self._dump(route_dump(family), parse)

    async def unreachable_routes(self, family: int = AF_INET) -> list[UnreachableRoute]:
        """``unreachable`` routes of the family, every table."""
        def parse(body: bytes) -> UnreachableRoute | None:
            p = parse_unreachable(body)
            return p if p is not None and p.family == family else None

        return await self._dump(route_dump(family), parse)

    async def neighbours(self, ifindex: int, family: int = AF_INET,
                         known: Known | None = None) -> list[Neighbour]:
        def parse(body: bytes) -> Neighbour | None:
            n = parse_neighbour(body)
            return (_as_known(n, known)
                    if n is not None and n.ifindex == ifindex and n.family == family else None)

        return await self._dump(neigh_dump(family), parse)

    async def fdb(self, ifindex: int, family: int = AF_INET,
                  known: Known | None = None) -> list[FdbEntry]:
        """The device's fdb entries whose remote (dst) is of ``family``."""
        def parse(body: bytes) -> FdbEntry | None:
            f = parse_fdb(body)
            return (_as_known(f, known)
                    if f is not None and f.ifindex == ifindex and f.family == family else None)

        return await self._dump(fdb_dump(), parse)

    async def addresses(self, ifindex: int | None = None, family: int = AF_INET) -> list[Address]:
        def parse(body: bytes) -> Address | None:
            a = parse_address(body)
            return a if a is not None and a.family == family and (
                ifindex is None or a.ifindex == ifindex) else None

        return await self._dump(addr_dump(family), parse)

    async def route_get(self, dsts: Sequence[IPAddress]) -> list[Route | None]:
        """What the kernel would use to reach each address (``ip route get``)."""
        if not dsts:
            return []
        result: list[Route | None] = await self._raw_call("route_get", list(dsts))
        return result

    async def default_route_ifindex(self, family: int = AF_INET) -> int | None:
        """Interface of the main table's default route with the lowest metric."""
        best: tuple[int, int] | None = None
        for route, metric in await self._route_dump(family):
            if route.table == RT_TABLE_MAIN and route.dst.prefixlen == 0 and (
                    best is None or metric < best[0]):
                best = (metric, route.ifindex)
        return None if best is None else best[1]

    async def link(self, name: str) -> LinkInfo | None:
        """The device called ``name`` (vxlan attributes decoded), or None."""
        results: list[tuple[int, str, list[tuple[int, bytes]]]] = await self._raw_call(
            "query", [link_get_request(name)])
        err, msg, answers = results[0]
        if err == errno_mod.ENODEV:
            return None
        if err:
            raise KernelError(f"link get {name}: {msg or os.strerror(err)}", err)
        for mtype, body in answers:
            if mtype == RTM_NEWLINK and (info := parse_link(body)) is not None:
                return info
        raise KernelError(f"link get {name}: no RTM_NEWLINK in the answer", errno_mod.EPROTO)

    async def interfaces(self, family: int = AF_INET) -> list[InterfaceInfo]:
        """Every device with its addresses of ``family`` (AF_INET6: in ``addresses6``)."""
        links = await self._dump(link_dump(), parse_link)
        addrs = await self.addresses(family=family)
        out: list[InterfaceInfo] = []
        for li in links:
            mine = tuple(a.address for a in addrs if a.ifindex == li.index)
            out.append(InterfaceInfo(
                name=li.name, index=li.index, mtu=li.mtu, up=li.up,
                addresses=tuple(a for a in mine if isinstance(a, IPv4Address)),
                loopback=li.kind == "loopback",
                addresses6=tuple(a for a in mine if isinstance(a, IPv6Address)),
            ))
        return out


def _as_known(obj: K, known: Known | None) -> K:
    """``obj``, or the known object equal to it (same key, same value) in its place."""
    if known is not None:
        same = known.get(obj.key)
        if same is not None and same == obj:
            return same  # equal, hence of obj's class
    return obj


def object_kinds(objs: Sequence[KernelObject]) -> dict[str, int]:
    """How many objects of each kind (for logs and the bench)."""
    counts: dict[str, int] = {}
    for obj in objs:
        counts[obj.kind] = counts.get(obj.kind, 0) + 1
    return counts
