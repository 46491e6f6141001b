"""The WireGuard drivers without WireGuard: fakes for wireguard-go and for the kernel.

Userspace: a fake UAPI server (asyncio, on a unix socket in a temporary ``socket_dir``) checks
the requests and answers, timeouts and errors; a fake ``wireguard-go`` executable (a small
Python script serving the same socket) checks starting, the log file, supervision (restart
with backoff, ``on_lost``), attaching and reaping.  Kernel: the driver's netlink sockets are one
end of AF_UNIX datagram socketpairs whose other end a thread answers like the kernel, so the
exact bytes sent, the ack handling and multi-part dumps are checked.  No root, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from polling import process_alive, until

from flanneld.backends.wireguard import drivers, genl, uapi
from flanneld.backends.wireguard.driver import WireguardDriverError
from flanneld.backends.wireguard.kernel import NO_MODULE, KernelDriver, kernel_support
from flanneld.backends.wireguard.keys import Key
from flanneld.backends.wireguard.model import DeviceConfig, Endpoint, PeerConfig
from flanneld.backends.wireguard.userspace import UserspaceDriver

pytestmark = pytest.mark.unit

DEV = "wgt0"


def _exists(pid: int) -> bool:
    """The pid exists at all (a zombie too): False once it was reaped."""
    return Path(f"/proc/{pid}").exists()


# == userspace: a fake UAPI server =============================================================

class FakeUapi:
    """Answers each request on ``<dir>/<dev>.sock`` with ``answer`` (None: says nothing;
    "close": closes at once); ``requests`` are what it read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.answer: bytes | str | None = b"errno=0\n\n"
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\n\n")
        except asyncio.IncompleteReadError:  # a connect-only liveness check
            writer.close()
            return
        self.requests.append(request)
        if self.answer == "close":
            writer.close()
            return
        if self.answer is None:
            await asyncio.sleep(3600)
            return
        assert isinstance(self.answer, bytes)
        writer.write(self.answer)
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@pytest.fixture
async def fake_uapi(tmp_path: Path) -> AsyncIterator[FakeUapi]:
    fake = FakeUapi(tmp_path / f"{DEV}.sock")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def _driver(tmp_path: Path, **kw: object) -> UserspaceDriver:
    args: dict[str, object] = {"socket_dir": tmp_path, "log_dir": tmp_path / "log",
                               "wireguard_go": str(tmp_path / "no-such-wireguard-go"),
                               "request_timeout": 1.0}
    args.update(kw)
    return UserspaceDriver(**args)  # type: ignore[arg-type]


def _config(private: Key, psk: Key | None = None) -> DeviceConfig:
    return DeviceConfig(private_key=private, listen_port=51820, replace_peers=True, peers=[
        PeerConfig(public_key=Key.generate().public(),
                   endpoint=Endpoint(IPv4Address("198.18.0.2"), 51820),
                   allowed_ips=(IPv4Network("10.244.2.0/24"),), preshared_key=psk)])


async def test_configure_sends_the_set_request_and_checks_errno(
        tmp_path: Path, fake_uapi: FakeUapi) -> None:
    driver = _driver(tmp_path)
    config = _config(Key.generate())
    await driver.configure(DEV, config)
    assert fake_uapi.requests == [uapi.encode_set(config)]


async def test_a_refusal_names_the_device_and_never_a_key(
        tmp_path: Path, fake_uapi: FakeUapi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_uapi.answer = b"errno=-22\n\n"
    private, psk = Key.generate(), Key.generate()
    with pytest.raises(uapi.UapiError) as info:
        await _driver(tmp_path).configure(DEV, _config(private, psk))
    assert info.value.errno == errno.EINVAL
    assert DEV in str(info.value) and os.strerror(errno.EINVAL) in str(info.value)
    for secret in (private, psk):
        for form in (secret.hex(), secret.base64()):
            assert form not in str(info.value) and form not in caplog.text


async def test_state_reads_the_get_answer(tmp_path: Path, fake_uapi: FakeUapi) -> None:
    private, peer = Key.generate(), Key.generate().public()
    fake_uapi.answer = (
        f"private_key={private.hex()}\nlisten_port=51820\npublic_key={peer.hex()}\n"
        "endpoint=198.18.0.2:51821\nallowed_ip=10.244.2.0/24\nlast_handshake_time_sec=17\n"
        "last_handshake_time_nsec=500000000\nrx_bytes=10\ntx_bytes=20\n"
        "persistent_keepalive_interval=0\nerrno=0\n\n").encode()
    state = await _driver(tmp_path).state(DEV)
    assert fake_uapi.requests == [b"get=1\n\n"]
    assert state.public_key == private.public() and state.listen_port == 51820
    (p,) = state.peers
    assert (p.public_key, p.last_handshake, p.rx_bytes, p.tx_bytes) == (peer, 17.5, 10, 20)
    assert p.endpoint == Endpoint(IPv4Address("198.18.0.2"), 51821)


async def test_a_request_without_answer_times_out(tmp_path: Path, fake_uapi: FakeUapi) -> None:
    fake_uapi.answer = None
    driver = _driver(tmp_path, request_timeout=0.2)
    with pytest.raises(WireguardDriverError, match=rf"wireguard-go for {DEV} did not answer a "
                       r"get request within 0.2 s"):
        await driver.state(DEV)


async def test_a_closed_connection_is_an_error(tmp_path: Path, fake_uapi: FakeUapi) -> None:
    fake_uapi.answer = "close"
    with pytest.raises(WireguardDriverError, match="closed the connection without answering"):
        await _driver(tmp_path).configure(DEV, DeviceConfig(listen_port=1))


async def test_no_socket_and_a_stale_socket(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    with pytest.raises(WireguardDriverError, match=r"no wireguard-go serves wgt0 \(.* does not"):
        await driver.state(DEV)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / f"{DEV}.sock"))
    stale.close()  # the file stays, nothing listens
    with pytest.raises(WireguardDriverError, match=r"is not running .*connection refused"):
        await driver.state(DEV)


async def test_ensure_attaches_to_a_running_one(tmp_path: Path, fake_uapi: FakeUapi) -> None:
    driver = _driver(tmp_path)  # its wireguard-go does not exist: it must not start one
    try:
        assert await driver.ensure_device(DEV) is False
        assert fake_uapi.requests == [b"get=1\n\n"]
        assert await driver.ensure_device(DEV) is False  # supervised already
        assert await driver.device_pid(DEV) is None  # the socket's owner is not a wireguard-go
    finally:
        await driver.close()


async def test_a_bad_name_is_refused(tmp_path: Path) -> None:
    for name in ("", "a" * 16, "../x", "a b"):
        with pytest.raises(WireguardDriverError, match="not a usable interface name"):
            await _driver(tmp_path).ensure_device(name)


# == userspace: a fake wireguard-go =============================================================

FAKE_WG = '''\
import contextlib, os, pathlib, socket, sys, time
assert sys.argv[1] == "-f", sys.argv
ifname = sys.argv[2]
d = pathlib.Path(SOCKDIR)
with open(d / (ifname + ".pids"), "a") as f:
    f.write("%d\\n" % os.getpid())
if (d / (ifname + ".fail")).exists():
    print("ERROR: (" + ifname + ") fake: Failed to create TUN device: told to", flush=True)
    sys.exit(1)
if (d / (ifname + ".hang")).exists():
    time.sleep(60)
print("fake wireguard-go", ifname, "foreground", os.environ.get("WG_PROCESS_FOREGROUND"),
      "level", os.environ.get("LOG_LEVEL"), flush=True)
path = d / (ifname + ".sock")
with contextlib.suppress(FileNotFoundError):
    path.unlink()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(str(path))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    with conn:
        buf = b""
        while b"\\n\\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
        if buf.startswith(b"get=1"):
            conn.sendall(("listen_port=%d\\nerrno=0\\n\\n" % os.getpid()).encode())
        elif buf.startswith(b"set=1"):
            conn.sendall(b"errno=0\\n\\n")
'''


@pytest.fixture
def fake_wg(tmp_path: Path) -> Iterator[Path]:
    """An executable that behaves like ``wireguard-go -f <dev>`` on ``tmp_path``; every process
    it became is killed afterwards."""
    exe = tmp_path / "fake-wireguard-go"
    exe.write_text(f"#!{sys.executable}\nSOCKDIR = {str(tmp_path)!r}\n{FAKE_WG}")
    exe.chmod(0o755)
    try:
        yield exe
    finally:
        for pid in _processes_of(exe):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _started(tmp_path: Path) -> list[int]:
    """The pids the fake wireguard-go had, in order."""
    try:
        return [int(x) for x in (tmp_path / f"{DEV}.pids").read_text().split()]
    except FileNotFoundError:
        return []


def _supervised(tmp_path: Path, exe: Path, **kw: object) -> UserspaceDriver:
    args: dict[str, object] = {"wireguard_go": str(exe), "restart_initial": 0.05,
                               "restart_cap": 0.2, "poll_interval": 0.05, "start_timeout": 5.0}
    args.update(kw)
    return _driver(tmp_path, **args)


async def test_start_log_session_and_restart(tmp_path: Path, fake_wg: Path) -> None:
    driver = _supervised(tmp_path, fake_wg)
    lost: list[str] = []
    driver.on_lost(lost.append)
    try:
        assert await driver.ensure_device(DEV) is True
        pid = await driver.device_pid(DEV)
        assert pid is not None and process_alive(pid)
        state = await driver.state(DEV)
        assert state.listen_port == pid  # it is this process that answers
        assert os.getsid(pid) == pid  # a session of its own: the daemon's signals miss it
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        log = tmp_path / "log" / f"wireguard-go-{DEV}.log"
        assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
        assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
        await until(lambda: f"fake wireguard-go {DEV} foreground 1 level error" in log.read_text())

        os.kill(pid, signal.SIGKILL)
        await until(lambda: lost == [DEV])
        new = await driver.device_pid(DEV)
        assert new is not None and new != pid and process_alive(new)
        assert not _exists(pid)  # reaped, not a zombie
        assert (await driver.state(DEV)).listen_port == new
        assert log.read_text().count("--- ") == 2
    finally:
        await driver.stop_device(DEV)


async def test_close_leaves_it_running_and_a_new_driver_attaches(
        tmp_path: Path, fake_wg: Path) -> None:
    first = _supervised(tmp_path, fake_wg)
    assert await first.ensure_device(DEV) is True
    pid = await first.device_pid(DEV)
    assert pid is not None
    await first.close()
    assert process_alive(pid)
    with pytest.raises(WireguardDriverError, match="closed"):
        await first.ensure_device(DEV)

    second = _supervised(tmp_path, fake_wg)
    lost: list[str] = []
    second.on_lost(lost.append)
    try:
        assert await second.ensure_device(DEV) is False
        assert await second.device_pid(DEV) == pid
        os.kill(pid, signal.SIGKILL)  # still a child of this process: the new driver reaps it
        await until(lambda: lost == [DEV])
        assert not _exists(pid)
        new = await second.device_pid(DEV)
        assert new is not None and new != pid
    finally:
        assert await second.stop_device(DEV) is True
    assert not _exists(new)
    assert not (tmp_path / f"{DEV}.sock").exists() or not await second.running(DEV)
    assert lost == [DEV]  # stopping is not losing


async def test_an_attached_one_that_dies_is_restarted(
        tmp_path: Path, fake_wg: Path, fake_uapi: FakeUapi) -> None:
    driver = _supervised(tmp_path, fake_wg)
    lost: list[str] = []
    driver.on_lost(lost.append)
    try:
        assert await driver.ensure_device(DEV) is False  # the fake server, not a child
        await fake_uapi.stop()
        await until(lambda: lost == [DEV])
        pid = await driver.device_pid(DEV)
        assert pid is not None and process_alive(pid)
    finally:
        await driver.stop_device(DEV)


async def test_a_replaced_socket_is_a_lost_device(tmp_path: Path, fake_uapi: FakeUapi) -> None:
    driver = _driver(tmp_path, poll_interval=0.05, restart_initial=0.05)
    lost: list[str] = []
    driver.on_lost(lost.append)
    try:
        assert await driver.ensure_device(DEV) is False
        # another wireguard-go took over the name between two polls: a new, empty device
        fake_uapi.path.unlink()
        replacement = FakeUapi(fake_uapi.path)
        await replacement.start()
        try:
            await until(lambda: lost == [DEV])
        finally:
            await replacement.stop()
    finally:
        await driver.close()


async def test_restarts_back_off_until_it_starts(
        tmp_path: Path, fake_wg: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flanneld.backends.wireguard.userspace")
    driver = _supervised(tmp_path, fake_wg)
    lost: list[str] = []
    driver.on_lost(lost.append)
    try:
        assert await driver.ensure_device(DEV) is True
        pid = await driver.device_pid(DEV)
        assert pid is not None
        fail = tmp_path / f"{DEV}.fail"
        fail.touch()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: "restart 4 of wireguard-go" in caplog.text)
        assert lost == []
        fail.unlink()
        await until(lambda: lost == [DEV])
        delays = [r.args[2] for r in caplog.records
                  if r.msg.startswith("restart %d of wireguard-go for %s in")]
        assert delays[:5] == [0.0, 0.05, 0.1, 0.2, 0.2][:len(delays[:5])]
        assert len(delays) >= 4
        pids = _started(tmp_path)
        assert len(pids) >= 5 and pids[0] == pid
        assert not any(_exists(p) for p in pids[:-1])  # each failed start reaped
        failures = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
        assert failures and "exited with status 1 at start" in failures[0]
        assert "Failed to create TUN device: told to" in failures[0]
    finally:
        await driver.stop_device(DEV)


async def test_a_failed_start_says_why_with_the_log(tmp_path: Path, fake_wg: Path) -> None:
    (tmp_path / f"{DEV}.fail").touch()
    driver = _supervised(tmp_path, fake_wg)
    with pytest.raises(WireguardDriverError) as info:
        await driver.ensure_device(DEV)
    message = str(info.value)
    assert f"wireguard-go for {DEV} exited with status 1 at start" in message
    assert str(tmp_path / "log" / f"wireguard-go-{DEV}.log") in message
    assert "Failed to create TUN device: told to" in message


async def test_a_start_that_never_answers_is_stopped(tmp_path: Path, fake_wg: Path) -> None:
    (tmp_path / f"{DEV}.hang").touch()
    driver = _supervised(tmp_path, fake_wg, start_timeout=0.5)
    with pytest.raises(WireguardDriverError, match=r"did not answer on .* within 0.5 s"):
        await driver.ensure_device(DEV)
    (pid,) = _started(tmp_path)
    assert not _exists(pid)  # terminated and reaped


def _processes_of(exe: Path) -> list[int]:
    """Every process (a zombie too) running ``exe``."""
    pids = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            with contextlib.suppress(OSError):
                if str(exe) in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(pid_dir.name))
    return pids


async def test_no_wireguard_go_installed(tmp_path: Path) -> None:
    with pytest.raises(WireguardDriverError, match=r"not found .*install the wireguard-go"):
        await _driver(tmp_path).ensure_device(DEV)


# == kernel: a fake netlink ===================================================================

FAMILY = 0x1234
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_MULTI, NLM_F_DUMP_INTR, NLM_F_CAPPED = 0x2, 0x10, 0x100
HDR = struct.Struct("=IHHII")
RTM_NEWLINK, RTM_GETLINK = 16, 18


def nla(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def nest(atype: int, payload: bytes) -> bytes:
    return nla(atype | 0x8000, payload)


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return HDR.pack(HDR.size + len(body), mtype, flags, seq, 0) + body


def ack(request: bytes, err: int = 0) -> bytes:
    seq = HDR.unpack_from(request)[3]
    return message(NLMSG_ERROR, NLM_F_CAPPED, seq, struct.pack("=i", -err) + request[:HDR.size])


def family_reply(seq: int) -> bytes:
    body = struct.pack("=BBH", 1, 2, 0) + nla(1, struct.pack("=H", FAMILY)) + nla(2, b"wireguard\0")
    return message(0x10, 0, seq, body)


def peer_attrs(key: Key, last: int, rx: int, tx: int, net: str, port: int) -> bytes:
    network = IPv4Network(net)
    sockaddr = struct.pack("=H", 2) + struct.pack("!H", port) + IPv4Address("198.18.0.2").packed
    allowed = nest(0, nla(1, struct.pack("=H", 2)) + nla(2, network.network_address.packed)
                   + nla(3, bytes([network.prefixlen])))
    return nest(0, nla(1, key.raw) + nla(2, bytes(32)) + nla(4, sockaddr + bytes(8))
                + nla(5, struct.pack("=H", 25)) + nla(6, struct.pack("=qq", last, 0))
                + nla(7, struct.pack("=Q", rx)) + nla(8, struct.pack("=Q", tx))
                + nla(9, allowed) + nla(10, struct.pack("=I", 1)))


Handler = Callable[[bytes], list[bytes]]


class FakeKernel:
    """Each socket the driver opens is a socketpair end; a thread answers on the other end
    with ``handler(request)`` (datagrams).  ``requests``: every request, in order."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.opened = 0
        self._threads: list[threading.Thread] = []
        self._ends: list[socket.socket] = []
        self._stop = threading.Event()

    def socket(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        theirs.settimeout(0.05)
        self._ends.append(theirs)
        self.opened += 1
        thread = threading.Thread(target=self._serve, args=(theirs,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return ours

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                request = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests.append(request)
            for datagram in self.handler(request):
                with contextlib.suppress(OSError):
                    sock.send(datagram)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for end in self._ends:
            end.close()


@contextlib.contextmanager
def kernel(handler: Handler) -> Iterator[FakeKernel]:
    fake = FakeKernel(handler)
    try:
        yield fake
    finally:
        fake.close()


def default_handler(request: bytes) -> list[bytes]:
    """The controller answers (reply and ack in two datagrams), sets are acked."""
    mtype, seq = HDR.unpack_from(request)[1], HDR.unpack_from(request)[3]
    if mtype == 0x10:
        return [family_reply(seq), ack(request)]
    return [ack(request)]


@pytest.fixture
def fake_kernel() -> Iterator[FakeKernel]:
    with kernel(default_handler) as fake:
        yield fake


def _kernel_driver(fake: FakeKernel, timeout: float = 1.0) -> KernelDriver:
    return KernelDriver(genl_socket=fake.socket, rtnl_socket=fake.socket, timeout=timeout)


def _big_config() -> DeviceConfig:
    """Enough peers for three messages of genl.MAX_MESSAGE."""
    peers = [PeerConfig(public_key=Key(bytes([i % 256, i // 256]) + bytes(30)),
                        endpoint=Endpoint(IPv4Address("198.18.0.2"), 51820),
                        allowed_ips=tuple(IPv4Network(f"10.{i // 256}.{i % 256}.{j * 64}/26")
                                          for j in range(4)))
             for i in range(600)]
    return DeviceConfig(private_key=Key.generate(), listen_port=51820, peers=peers)


async def test_kernel_configure_sends_the_chunks_in_order(fake_kernel: FakeKernel) -> None:
    driver = _kernel_driver(fake_kernel)
    config = _big_config()
    await driver.configure(DEV, config)
    expected = genl.encode_set_chunks(FAMILY, 2, DEV, config)
    assert len(expected) >= 3
    assert fake_kernel.requests[0] == genl.encode_getfamily(1)
    assert fake_kernel.requests[1:] == expected
    # the next request goes on after the chunks' sequence numbers, on the same socket
    await driver.configure(DEV, DeviceConfig(listen_port=1))
    assert fake_kernel.requests[-1] == genl.encode_set_chunks(
        FAMILY, 2 + len(expected), DEV, DeviceConfig(listen_port=1))[0]
    assert fake_kernel.opened == 1
    await driver.close()


async def test_kernel_configure_stops_at_a_refused_chunk() -> None:
    def handler(request: bytes) -> list[bytes]:
        if HDR.unpack_from(request)[1] == FAMILY and HDR.unpack_from(request)[3] == 3:
            return [ack(request, errno.EINVAL)]  # the second chunk
        return default_handler(request)

    private = Key.generate()
    with kernel(handler) as fake:
        driver = _kernel_driver(fake)
        config = DeviceConfig(private_key=private, peers=_big_config().peers)
        with pytest.raises(genl.GenlError) as info:
            await driver.configure(DEV, config)
        chunks = genl.encode_set_chunks(FAMILY, 2, DEV, config)
        assert fake.requests[1:] == chunks[:2]  # nothing after the refused one
        assert info.value.errno == errno.EINVAL
        message = str(info.value)
        assert f"wireguard device {DEV}" in message and os.strerror(errno.EINVAL) in message
        assert f"message 2 of {len(chunks)}" in message
        assert private.hex() not in message and private.base64() not in message
        await driver.close()


def dump_handler(peers: list[tuple[Key, int, int, int, str]], interrupted: list[bool],
                 device_key: Key) -> Handler:
    """The dump in three datagrams: the device with the first peer, then the others (and a
    stray message of another sequence number), then NLMSG_DONE."""
    def handler(request: bytes) -> list[bytes]:
        mtype, seq = HDR.unpack_from(request)[1], HDR.unpack_from(request)[3]
        if mtype != FAMILY:
            return default_handler(request)
        flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if interrupted and interrupted.pop(0) else 0)
        head = struct.pack("=BBH", 0, 1, 0)
        first = (head + nla(6, struct.pack("=H", 51820)) + nla(7, struct.pack("=I", 0))
                 + nla(1, struct.pack("=I", 7)) + nla(2, DEV.encode() + b"\0")
                 + nla(3, device_key.raw) + nla(4, device_key.public().raw)
                 + nest(8, peer_attrs(*peers[0], 51821)))
        rest = head + nest(8, b"".join(peer_attrs(*p, 51821) for p in peers[1:]))
        stray = message(FAMILY, NLM_F_MULTI, seq + 1000, rest)
        return [message(FAMILY, flags, seq, first),
                stray + message(FAMILY, NLM_F_MULTI, seq, rest),
                message(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", 0))]
    return handler


PEERS = [(Key(bytes([n]) * 32), 1700000000 + n, 100 * n, 200 * n, f"10.244.{n}.0/24")
         for n in range(1, 4)]


async def test_kernel_state_collects_a_multi_part_dump() -> None:
    device_key = Key.generate()
    with kernel(dump_handler(PEERS, [], device_key)) as fake:
        driver = _kernel_driver(fake)
        state = await driver.state(DEV)
        assert fake.requests[1] == genl.encode_get(FAMILY, 2, DEV)
        assert state.public_key == device_key.public() and state.listen_port == 51820
        assert [(p.public_key, p.last_handshake, p.rx_bytes, p.tx_bytes, p.allowed_ips)
                for p in state.peers] == [
            (k, float(t), rx, tx, (IPv4Network(net),)) for k, t, rx, tx, net in PEERS]
        assert state.peers[0].endpoint == Endpoint(IPv4Address("198.18.0.2"), 51821)
        await driver.close()


async def test_kernel_state_asks_again_after_an_interrupted_dump() -> None:
    interrupted = [True, True]
    with kernel(dump_handler(PEERS, interrupted, Key.generate())) as fake:
        driver = _kernel_driver(fake)
        state = await driver.state(DEV)
        assert len(state.peers) == 3
        assert interrupted == []
        assert [HDR.unpack_from(r)[1] for r in fake.requests] == [0x10, FAMILY, FAMILY, FAMILY]
        await driver.close()


async def test_kernel_state_of_a_missing_device() -> None:
    def handler(request: bytes) -> list[bytes]:
        if HDR.unpack_from(request)[1] == FAMILY:
            return [ack(request, errno.ENODEV)]
        return default_handler(request)

    with kernel(handler) as fake:
        driver = _kernel_driver(fake)
        with pytest.raises(genl.GenlError) as info:
            await driver.state(DEV)
        assert info.value.errno == errno.ENODEV
        assert DEV in str(info.value) and os.strerror(errno.ENODEV) in str(info.value)
        await driver.close()


async def test_kernel_without_wireguard() -> None:
    def handler(request: bytes) -> list[bytes]:
        return [ack(request, errno.ENOENT)]

    with kernel(handler) as fake:
        driver = _kernel_driver(fake)
        with pytest.raises(genl.GenlError, match="wireguard module"):
            await driver.configure(DEV, DeviceConfig(listen_port=1))
        reason = await kernel_support(genl_socket=fake.socket)
        assert reason is not None and "wireguard module" in reason
        await driver.close()


async def test_kernel_support_found(fake_kernel: FakeKernel) -> None:
    assert await kernel_support(genl_socket=fake_kernel.socket) is None


async def test_kernel_timeout_then_a_fresh_socket() -> None:
    silent = [True]

    def handler(request: bytes) -> list[bytes]:
        if HDR.unpack_from(request)[1] == FAMILY and silent and silent.pop():
            return []
        return default_handler(request)

    with kernel(handler) as fake:
        driver = _kernel_driver(fake, timeout=0.2)
        with pytest.raises(WireguardDriverError, match=r"no answer to the configuration of "
                           r"wgt0 within 0.2 s"):
            await driver.configure(DEV, DeviceConfig(listen_port=1))
        await driver.configure(DEV, DeviceConfig(listen_port=1))
        assert fake.opened == 2  # the socket of the lost answer was dropped
        await driver.close()


def link_handler(newlink_errno: int, kind: str) -> Handler:
    def handler(request: bytes) -> list[bytes]:
        mtype, seq = HDR.unpack_from(request)[1], HDR.unpack_from(request)[3]
        if mtype == RTM_NEWLINK:
            return [ack(request, newlink_errno)]
        if mtype == RTM_GETLINK:
            body = (struct.pack("=BxHiII", 0, 65534, 7, 0x1, 0) + nla(3, DEV.encode() + b"\0")
                    + nla(4, struct.pack("=I", 1420)) + nla(18, nla(1, kind.encode() + b"\0")))
            return [message(RTM_NEWLINK, 0, seq, body), ack(request)]
        return default_handler(request)
    return handler


@pytest.mark.parametrize(("err", "kind", "outcome"), [
    (0, "", True),
    (errno.EEXIST, "wireguard", False),
    (errno.EEXIST, "tun", "exists and is not a kernel WireGuard device (kind tun)"),
    (errno.EOPNOTSUPP, "", NO_MODULE),
    (errno.EPERM, "", f"could not create wireguard interface {DEV}: "
                      f"{os.strerror(errno.EPERM)}"),
])
async def test_kernel_ensure_device(err: int, kind: str, outcome: bool | str) -> None:
    with kernel(link_handler(err, kind)) as fake:
        driver = _kernel_driver(fake)
        if isinstance(outcome, bool):
            assert await driver.ensure_device(DEV) is outcome
        else:
            with pytest.raises(WireguardDriverError) as info:
                await driver.ensure_device(DEV)
            assert outcome in str(info.value)
        newlink = fake.requests[0]
        assert newlink == genl.encode_newlink(HDR.unpack_from(newlink)[3], DEV, 1420)
        if err == errno.EEXIST:
            assert HDR.unpack_from(fake.requests[1])[1] == RTM_GETLINK
        else:
            assert len(fake.requests) == 1
        await driver.close()


# == choosing ====================================================================================

async def test_choose_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             fake_uapi: FakeUapi) -> None:
    assert isinstance(await drivers.choose_driver("kernel"), KernelDriver)
    assert isinstance(await drivers.choose_driver("userspace"), UserspaceDriver)
    with pytest.raises(WireguardDriverError, match="unknown WireGuard driver 'wg'"):
        await drivers.choose_driver("wg")

    monkeypatch.setattr(drivers, "UserspaceDriver",
                        functools.partial(UserspaceDriver, socket_dir=tmp_path))
    reasons: list[str | None] = [None]

    async def support() -> str | None:
        return reasons[0]

    monkeypatch.setattr(drivers, "kernel_support", support)
    assert isinstance(await drivers.choose_driver("auto", devices=("other",)), KernelDriver)
    # a wireguard-go already serves one of the devices: keep it, whatever the kernel has
    assert isinstance(await drivers.choose_driver("auto", devices=("other", DEV)),
                      UserspaceDriver)
    reasons[0] = "no module"
    assert isinstance(await drivers.choose_driver("auto", devices=("other",)), UserspaceDriver)
