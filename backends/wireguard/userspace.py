"""The userspace driver: ``wireguard-go``, started and supervised, spoken to over its UAPI socket.

``wireguard-go -f <dev>`` makes a TUN device of that name and serves WireGuard's text protocol
(``uapi``) on ``/var/run/wireguard/<dev>.sock`` (a fixed path: one mount namespace has one set
of userspace devices).  What this driver adds:

- ``ensure_device`` attaches to a wireguard-go that already answers on the socket (one a previous
  run of the daemon left running: pods keep talking across a daemon restart), else starts one in
  its own session (it survives the daemon and the signals sent to the daemon's process group),
  stdin from /dev/null and its output appended to ``<log_dir>/wireguard-go-<dev>.log``, never the
  daemon's stderr: a Go program that writes to a closed pipe dies of SIGPIPE.
- Each request (``configure``, ``state``) is one connection, answered up to the empty line after
  ``errno=``, within ``request_timeout``.
- A supervisor task per device notices wireguard-go is gone (a child of ours: its pidfd becomes
  readable and it is reaped at once; one we attached to: the socket stops accepting, or is
  replaced by another one, polled every ``poll_interval``), starts it again (at once, then
  1 s, 2 s, ... 30 s between failed starts; a run of ``STABLE_AFTER`` seconds resets it) and
  calls the ``on_lost`` callbacks: a new wireguard-go has a new, empty device (no key, port,
  address, routes, peers).
- ``close`` stops supervising and leaves every wireguard-go running.

A private key or preshared key is never logged or put into an error: requests are not echoed,
answers are only quoted by the codec, which leaves keys out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flanneld.backends.wireguard import uapi
from flanneld.backends.wireguard.driver import WireguardDriverError
from flanneld.backends.wireguard.model import DeviceConfig, DeviceState

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"  # wireguard-go's, fixed at its build
LOG_DIR = "/run/flannel"
WIREGUARD_GO = "wireguard-go"
REQUEST_TIMEOUT = 5.0
START_TIMEOUT = 5.0
POLL_INTERVAL = 1.0
RESTART_INITIAL = 1.0
RESTART_CAP = 30.0
STABLE_AFTER = 60.0  # a wireguard-go that ran this long is restarted at once again
LOG_TAIL_LINES = 8
IFNAMSIZ = 16
# An answer to a get is ~250 bytes a peer: allow a few hundred thousand peers.
_ANSWER_LIMIT = 64 << 20
_UCRED = struct.Struct("=iII")  # pid, uid, gid


def _check_ifname(ifname: str) -> None:
    if not ifname or len(ifname) >= IFNAMSIZ or "/" in ifname or ifname in (".", "..") \
            or not ifname.isprintable() or any(c.isspace() for c in ifname):
        raise WireguardDriverError(f"{ifname!r} is not a usable interface name")


def _status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 0:  # what wireguard-go does when its TUN device or socket is deleted
        return "exited with status 0 (its device or socket was deleted, or it was stopped)"
    return f"exited with status {returncode}"


# wireguard-go processes this process started, by socket path, shared by all drivers of the
# process: a driver that attaches to one an earlier driver started still reaps it.
_children: dict[str, subprocess.Popen[bytes]] = {}


@dataclass(eq=False)
class _Device:
    ifname: str
    proc: subprocess.Popen[bytes] | None  # our child; None: attached to one we did not start
    socket_ino: int  # the socket's inode when we attached or started (a new one: a new device)
    since: float  # time.monotonic() of the start or attach
    delay: float  # the next restart's backoff
    restarts: int = 0
    task: asyncio.Task[None] | None = None
    restarting: bool = False


class UserspaceDriver:
    """wireguard-go devices (see the module's doc)."""

    name = "userspace"

    def __init__(
        self,
        *,
        socket_dir: str | os.PathLike[str] = SOCKET_DIR,
        log_dir: str | os.PathLike[str] = LOG_DIR,
        wireguard_go: str = WIREGUARD_GO,
        log_level: str = "error",
        request_timeout: float = REQUEST_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        restart_initial: float = RESTART_INITIAL,
        restart_cap: float = RESTART_CAP,
    ) -> None:
        """``socket_dir`` is where wireguard-go's sockets are (only a fake server's can be
        elsewhere); ``log_level`` is wireguard-go's ``LOG_LEVEL`` (``error``, ``verbose``,
        ``silent``)."""
        self.socket_dir = Path(socket_dir)
        self.log_dir = Path(log_dir)
        self.wireguard_go = wireguard_go
        self.log_level = log_level
        self.request_timeout = request_timeout
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.restart_initial = restart_initial
        self.restart_cap = restart_cap
        self._devices: dict[str, _Device] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self._closed = False
        self._ensure_lock = asyncio.Lock()

    # -- paths -------------------------------------------------------------------------------

    def socket_path(self, ifname: str) -> Path:
        return self.socket_dir / f"{ifname}.sock"

    def log_path(self, ifname: str) -> Path:
        return self.log_dir / f"wireguard-go-{ifname}.log"

    # -- the Driver interface ------------------------------------------------------------------

    async def ensure_device(self, ifname: str) -> bool:
        _check_ifname(ifname)
        async with self._ensure_lock:  # two callers must not start two wireguard-go
            return await self._ensure_device(ifname)

    async def _ensure_device(self, ifname: str) -> bool:
        if self._closed:
            raise WireguardDriverError("the userspace WireGuard driver is closed")
        dev = self._devices.get(ifname)
        if dev is not None:
            if dev.restarting or await self._peer(self.socket_path(ifname)) is None:
                raise WireguardDriverError(
                    f"wireguard-go for {ifname} is not answering; its supervisor restarts it")
            return False
        path = self.socket_path(ifname)
        if await self._answers(ifname):
            child = _children.get(str(path))
            proc = child if child is not None and child.poll() is None else None
            pid = proc.pid if proc is not None else await self.device_pid(ifname)
            log.info("wireguard-go for %s is running (pid %s): attached to it", ifname,
                     pid if pid is not None else "unknown")
            self._supervise(ifname, proc)
            return False
        proc = await self._start(ifname)
        self._supervise(ifname, proc)
        return True

    async def configure(self, ifname: str, config: DeviceConfig) -> None:
        _check_ifname(ifname)
        request = uapi.encode_set(config)
        answer = await self._request(ifname, request, "a set request")
        try:
            uapi.parse_set_response(answer)
        except uapi.UapiError as exc:
            raise uapi.UapiError(f"wireguard-go for {ifname}: {exc}", exc.errno) from None

    async def state(self, ifname: str) -> DeviceState:
        _check_ifname(ifname)
        answer = await self._request(ifname, uapi.encode_get(), "a get request")
        try:
            return uapi.parse_get(answer)
        except uapi.UapiError as exc:
            raise uapi.UapiError(f"wireguard-go for {ifname}: {exc}", exc.errno) from None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    async def close(self) -> None:
        """Stop supervising; every wireguard-go keeps running (a new driver attaches)."""
        self._closed = True
        devices = list(self._devices.values())
        self._devices.clear()
        for dev in devices:
            await self._stop_supervising(dev)

    # -- extras for operators and tests ---------------------------------------------------------

    async def device_pid(self, ifname: str) -> int | None:
        """The pid of the wireguard-go serving ``ifname``: our child's, else the socket owner's
        (SO_PEERCRED) when that process is a wireguard-go; None when none answers.  (A
        wireguard-go started without ``-f`` forks after opening the socket: the owner's pid is
        then its exited parent's, and None is returned.)"""
        dev = self._devices.get(ifname)
        if dev is not None and dev.proc is not None and dev.proc.poll() is None:
            return dev.proc.pid
        peer = await self._peer(self.socket_path(ifname))
        if not peer:
            return None
        try:
            comm = Path(f"/proc/{peer}/comm").read_text().strip()  # noqa: ASYNC240 (procfs)
        except OSError:
            return None
        return peer if comm.startswith("wireguard-go") else None

    async def running(self, ifname: str) -> bool:
        """Whether something listens on ``ifname``'s socket (nothing is started or removed)."""
        _check_ifname(ifname)
        return await self._peer(self.socket_path(ifname)) is not None

    async def stop_device(self, ifname: str, grace: float = 5.0) -> bool:
        """Stop supervising ``ifname`` and terminate its wireguard-go (SIGTERM, SIGKILL after
        ``grace`` seconds), which removes the device; True if one was running.  For tests and
        clean-up: the daemon never calls it."""
        _check_ifname(ifname)
        dev = self._devices.pop(ifname, None)
        proc: subprocess.Popen[bytes] | None = None
        if dev is not None:
            await self._stop_supervising(dev)
            proc = dev.proc
        if proc is None or proc.poll() is not None:
            child = _children.get(str(self.socket_path(ifname)))
            proc = child if child is not None and child.poll() is None else None
        if proc is not None:
            await self._terminate(proc, grace)
            return True
        pid = await self.device_pid(ifname)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _pid_alive(pid):  # not our child: we cannot reap it
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + grace
            await asyncio.sleep(0.02)
        return True

    # -- UAPI requests ---------------------------------------------------------------------------

    async def _request(self, ifname: str, request: bytes, what: str) -> str:
        """Send one request on a connection of its own; the answer up to its empty line."""
        path = self.socket_path(ifname)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.request_timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=_ANSWER_LIMIT)
                writer.write(request)
                await writer.drain()
                data = await reader.readuntil(b"\n\n")
        except TimeoutError:
            raise WireguardDriverError(
                f"wireguard-go for {ifname} did not answer {what} within "
                f"{self.request_timeout:g} s ({path})") from None
        except FileNotFoundError:
            raise WireguardDriverError(
                f"no wireguard-go serves {ifname} ({path} does not exist)") from None
        except ConnectionRefusedError:
            raise WireguardDriverError(
                f"wireguard-go for {ifname} is not running ({path}: connection refused)") from None
        except asyncio.IncompleteReadError:
            raise WireguardDriverError(
                f"wireguard-go for {ifname} closed the connection without answering {what} "
                "(it did not understand the request)") from None
        except asyncio.LimitOverrunError:
            raise WireguardDriverError(
                f"the answer of wireguard-go for {ifname} to {what} is larger than "
                f"{_ANSWER_LIMIT >> 20} MiB") from None
        except OSError as exc:
            raise WireguardDriverError(
                f"cannot talk to wireguard-go for {ifname} ({path}): "
                f"{exc.strerror or exc.__class__.__name__}") from None
        finally:
            if writer is not None:
                writer.close()
        return data.decode("utf-8", errors="replace")

    async def _answers(self, ifname: str, within: float | None = None,
                       remove_stale: bool = True) -> bool:
        """Whether a wireguard-go answers a get on the socket.  False: nothing listens (a
        stale socket file is removed unless ``remove_stale`` is false: never while one of ours
        starts, as wireguard-go exits when its socket file is deleted); WireguardDriverError:
        one listens but does not answer (it is not to be replaced behind its back)."""
        path = self.socket_path(ifname)
        try:
            async with asyncio.timeout(within or self.request_timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=_ANSWER_LIMIT)
                try:
                    writer.write(uapi.encode_get())
                    await writer.drain()
                    data = await reader.readuntil(b"\n\n")
                finally:
                    writer.close()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if remove_stale and isinstance(exc, ConnectionRefusedError):
                log.info("removing the stale wireguard-go socket %s (nothing listens)", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return False
        except TimeoutError:
            raise WireguardDriverError(
                f"wireguard-go for {ifname} accepts on {path} but does not answer "
                "(stop it, or remove the socket)") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise WireguardDriverError(
                f"what listens on {path} does not answer like wireguard-go") from None
        except OSError as exc:
            raise WireguardDriverError(
                f"cannot talk to wireguard-go for {ifname} ({path}): "
                f"{exc.strerror or exc.__class__.__name__}") from None
        return data.rstrip(b"\n").rpartition(b"\n")[2].startswith(b"errno=")

    async def _peer(self, path: Path) -> int | None:
        """Connect and leave: the listener's pid (0 if unknown); None when nothing listens."""
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.request_timeout):
                    await loop.sock_connect(sock, str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                return None
            except (TimeoutError, OSError) as exc:  # busy, but there
                log.debug("connecting to %s: %s", path, exc)
                return 0
            with contextlib.suppress(OSError):
                pid: int = _UCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[0]
                return pid
        return 0

    # -- starting wireguard-go ---------------------------------------------------------------

    async def _start(self, ifname: str) -> subprocess.Popen[bytes]:
        """Start wireguard-go for ``ifname`` and wait until it answers on its socket."""
        exe = shutil.which(self.wireguard_go)
        if exe is None:
            raise WireguardDriverError(
                f"{self.wireguard_go} not found (install the wireguard-go package, or load the "
                "WireGuard kernel module and use --wireguard-driver kernel)")
        log_path = self.log_path(ifname)
        proc, offset = self._spawn(exe, ifname, log_path)
        _children[str(self.socket_path(ifname))] = proc
        log.info("started wireguard-go for %s (pid %d, log %s)", ifname, proc.pid, log_path)
        try:
            await self._wait_serving(ifname, proc, log_path, offset)
        except BaseException:
            await self._terminate(proc, 1.0)
            raise
        return proc

    def _spawn(self, exe: str, ifname: str, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
        """Fork wireguard-go in a session of its own, output appended to ``log_path``; the
        process and the log's size before its first line."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "WG_PROCESS_FOREGROUND": "1",
            "LOG_LEVEL": self.log_level,
        }
        try:
            log_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise WireguardDriverError(
                f"cannot open the wireguard-go log {log_path}: {exc.strerror}") from None
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            os.write(fd, f"--- {stamp} flanneld (pid {os.getpid()}): {exe} -f {ifname}\n".encode())
            proc = subprocess.Popen(
                [exe, "-f", ifname], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            raise WireguardDriverError(
                f"cannot start {exe} for {ifname}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        return proc, offset

    async def _wait_serving(self, ifname: str, proc: subprocess.Popen[bytes], log_path: Path,
                            offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        path = self.socket_path(ifname)
        while True:
            if proc.poll() is not None:
                _children.pop(str(path), None)
                raise WireguardDriverError(
                    f"wireguard-go for {ifname} {_status(proc.returncode)} at start"
                    f"{_log_tail(log_path, offset)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireguardDriverError(
                    f"wireguard-go for {ifname} did not answer on {path} within "
                    f"{self.start_timeout:g} s{_log_tail(log_path, offset)}")
            with contextlib.suppress(WireguardDriverError):
                answers = await self._answers(ifname, within=min(left, 1.0), remove_stale=False)
                if answers and proc.poll() is None:
                    return
            await asyncio.sleep(min(0.02, max(left, 0.001)))

    async def _terminate(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM (wireguard-go then removes its device and socket), SIGKILL after ``grace``
        seconds; reaped either way."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            if not await _wait_exit(proc, grace):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await _wait_exit(proc, None)
        for key, child in list(_children.items()):
            if child is proc:
                del _children[key]

    # -- supervision -----------------------------------------------------------------------------

    def _supervise(self, ifname: str, proc: subprocess.Popen[bytes] | None) -> None:
        dev = _Device(ifname=ifname, proc=proc, socket_ino=_inode(self.socket_path(ifname)),
                      since=time.monotonic(), delay=0.0)
        self._devices[ifname] = dev
        dev.task = asyncio.create_task(self._supervisor(dev), name=f"wireguard-go {ifname}")

    async def _stop_supervising(self, dev: _Device) -> None:
        if dev.task is not None:
            dev.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dev.task
            dev.task = None

    async def _supervisor(self, dev: _Device) -> None:
        while True:
            try:
                reason = await self._gone(dev)
            except Exception:  # a bug must not end the supervision
                log.exception("watching wireguard-go for %s failed; watching again", dev.ifname)
                await asyncio.sleep(self.poll_interval)
                continue
            dev.restarting = True
            ran = time.monotonic() - dev.since
            if ran >= STABLE_AFTER:
                dev.delay = 0.0
            log.warning("wireguard-go for %s %s after %.0f s; restarting it", dev.ifname,
                        reason, ran)
            await self._restart(dev)
            dev.socket_ino = _inode(self.socket_path(dev.ifname))
            dev.since = time.monotonic()
            dev.restarting = False
            log.warning("wireguard-go for %s is back (restart %d, pid %s): its device is new "
                        "and has to be set up again", dev.ifname, dev.restarts,
                        dev.proc.pid if dev.proc is not None else "unknown")
            for callback in list(self._callbacks):
                try:
                    callback(dev.ifname)
                except Exception:
                    log.exception("on_lost callback for %s failed", dev.ifname)

    async def _restart(self, dev: _Device) -> None:
        """Start wireguard-go again, after ``dev.delay`` (0 the first time: pod traffic is
        refused while the device is gone) and with a growing delay between failed attempts,
        until it answers (or attach to one someone else started)."""
        while True:
            dev.restarts += 1
            log.warning("restart %d of wireguard-go for %s in %g s", dev.restarts,
                        dev.ifname, dev.delay)
            await asyncio.sleep(dev.delay)
            dev.delay = min(self.restart_cap, max(self.restart_initial, dev.delay * 2))
            try:
                if await self._answers(dev.ifname):  # someone started one: use it
                    child = _children.get(str(self.socket_path(dev.ifname)))
                    dev.proc = child if child is not None and child.poll() is None else None
                else:
                    dev.proc = await self._start(dev.ifname)
                return
            except WireguardDriverError as exc:
                log.error("restart %d of wireguard-go for %s failed: %s", dev.restarts,
                          dev.ifname, exc)
            except Exception:
                log.exception("restart %d of wireguard-go for %s failed", dev.restarts,
                              dev.ifname)

    async def _gone(self, dev: _Device) -> str:
        """Wait until the device's wireguard-go is gone; why, for the log."""
        proc = dev.proc
        if proc is not None:
            await _wait_exit(proc, None, self.poll_interval)
            for key, child in list(_children.items()):
                if child is proc:
                    del _children[key]
            assert proc.returncode is not None
            return _status(proc.returncode)
        path = self.socket_path(dev.ifname)
        while True:
            await asyncio.sleep(self.poll_interval)
            if await self._peer(path) is None:
                return f"stopped accepting on {path}"
            ino = _inode(path)
            if ino != dev.socket_ino:
                return f"was replaced by another process on {path}"


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return 0


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def _wait_exit(proc: subprocess.Popen[bytes], within: float | None,
                     poll_interval: float = 0.05) -> bool:
    """Wait until our child ``proc`` exits and reap it (its pidfd wakes the loop: no thread,
    no polling); False when it still runs after ``within`` seconds."""
    if proc.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # a kernel without pidfds (before 5.3)
        pidfd = -1
    try:
        async with asyncio.timeout(within):
            if pidfd >= 0:
                loop = asyncio.get_running_loop()
                exited: asyncio.Future[None] = loop.create_future()

                def readable() -> None:
                    if not exited.done():
                        exited.set_result(None)

                loop.add_reader(pidfd, readable)
                try:
                    await exited
                finally:
                    loop.remove_reader(pidfd)
                proc.wait()  # a zombie by now: reaps it without blocking
            else:
                while proc.poll() is None:  # noqa: ASYNC110 (nothing to wait on without a pidfd)
                    await asyncio.sleep(poll_interval)
    except TimeoutError:
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return True


def _log_tail(path: Path, offset: int) -> str:
    """The last lines wireguard-go wrote to its log since ``offset``, for an error message."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read(1 << 16).decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines()[1:] if line.strip()][-LOG_TAIL_LINES:]
    if not lines:
        return f" (nothing in its log {path})"
    return f"; its log {path} ends: " + " | ".join(lines)

