"""The sd_notify protocol, without libsystemd or a Python dependency.

systemd's ``Type=notify`` services report state by sending newline-separated ``KEY=VALUE``
assignments in one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or an
abstract-namespace name when it starts with ``@``). We send READY=1 only once /readyz would say
ready, STATUS= with the same reason text, WATCHDOG=1 from a task on the daemon's own event loop
(so a wedged loop stops the pings and systemd restarts us), and STOPPING=1 on shutdown.

Without ``$NOTIFY_SOCKET`` every call is a no-op, so the daemon calls it unconditionally.
Sending never blocks the loop (MSG_DONTWAIT) and never raises: a lost notification is logged,
since systemd has its own timeouts for a service that stays silent.

``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, which must be our pid if set) give the watchdog
interval; we ping at half of it, as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping
from typing import Protocol

log = logging.getLogger(__name__)

NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class _ReadinessLike(Protocol):
    def add_listener(self, listener: Callable[[bool, str], None]) -> None: ...


def socket_address(notify_socket: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` to a sockaddr: ``@name`` is the abstract name ``\\0name``."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from ``WATCHDOG_USEC``, or None when not for us.

    Like sd_watchdog_enabled(3): None if WATCHDOG_USEC is unset, not a positive integer, or
    WATCHDOG_PID is set and is not our pid.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return value / 1_000_000


class Notifier:
    """Sends sd_notify messages; every method is a no-op when there is no notify socket."""

    def __init__(self, notify_socket: str | None) -> None:
        self.notify_socket = notify_socket or None
        self._sock: socket.socket | None = None
        self._ready_sent = False

    @classmethod
    def from_env(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
    ) -> Notifier:
        """Build from ``$NOTIFY_SOCKET``. ``unset_environment`` removes NOTIFY_SOCKET,
        WATCHDOG_USEC and WATCHDOG_PID so child processes (nft, iptables) do not inherit them;
        call :func:`watchdog_interval` before that."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"))
        if unset_environment:
            for key in NOTIFY_ENV:
                env.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.notify_socket is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram. True if sent (False: disabled or failed)."""
        if self.notify_socket is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, socket.MSG_DONTWAIT, socket_address(self.notify_socket))
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.notify_socket, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        self._ready_sent = self.send(*lines) or self._ready_sent
        return self._ready_sent

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def follow_readiness(self, readiness: _ReadinessLike) -> None:
        """STATUS= on every readiness change; READY=1 the first time it becomes ready.

        After that, losing readiness (lease lost) only changes STATUS=: systemd has no
        "not ready any more" state, the watchdog and Restart= handle a dead daemon.
        """

        def on_change(ready: bool, reason: str) -> None:
            if ready and not self._ready_sent:
                self.ready(status=reason)
            else:
                self.status(reason)

        readiness.add_listener(on_change)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def run_watchdog(notifier: Notifier, watchdog_sec: float) -> None:
    """Send WATCHDOG=1 every ``watchdog_sec / 2`` seconds, from the event loop, until cancelled."""
    period = watchdog_sec / 2
    while True:
        notifier.watchdog()
        await asyncio.sleep(period)


def start_watchdog(notifier: Notifier, environ: Mapping[str, str] | None = None) -> asyncio.Task[None] | None:
    """Start :func:`run_watchdog` if systemd asked for a watchdog; keep the returned task and
    cancel it on shutdown. None when there is no watchdog (or no notify socket)."""
    timeout = watchdog_interval(environ)
    if timeout is None or not notifier.enabled:
        return None
    log.debug("systemd watchdog every %.3fs (timeout %.3fs)", timeout / 2, timeout)
    return asyncio.get_running_loop().create_task(run_watchdog(notifier, timeout), name="sd-watchdog")


async def stop_watchdog(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
