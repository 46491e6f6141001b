"""flanneld.sdnotify against real AF_UNIX datagram sockets owned by the test."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flanneld.health import Readiness
from flanneld.sdnotify import (
    Notifier,
    socket_address,
    start_watchdog,
    stop_watchdog,
    watchdog_interval,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def pending(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return out


def test_messages_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.status("waiting for:\n lease")
    assert recv(sock) == "STATUS=waiting for: lease"
    assert n.ready(status="ready")
    assert recv(sock) == "READY=1\nSTATUS=ready"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"
    n.close()


def test_abstract_socket() -> None:
    name = f"fops-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        n = Notifier(f"@{name}")
        assert n.ready()
        assert recv(sock) == "READY=1"
    finally:
        sock.close()
    assert socket_address("@x") == b"\0x"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_disabled_is_a_noop() -> None:
    env: dict[str, str] = {}
    n = Notifier.from_env(env)
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()


def test_missing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.send("READY=1") is False


def test_unset_environment() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1", "OTHER": "y"}
    n = Notifier.from_env(env, unset_environment=True)
    assert n.notify_socket == "/x"
    assert env == {"OTHER": "y"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 20.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_ready_only_when_readiness_says_so(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    r = Readiness()
    n.follow_readiness(r)
    r.set_lease_held(True)
    r.set_backend_programmed(True)
    msgs = pending(sock)
    assert all("READY=1" not in m for m in msgs), msgs
    assert msgs[-1] == "STATUS=waiting for: subnet.env"
    r.set_subnet_file_written(True)
    assert recv(sock) == "READY=1\nSTATUS=ready"
    r.set_lease_held(False)
    assert recv(sock) == "STATUS=lease lost"
    r.set_lease_held(True)
    assert recv(sock) == "STATUS=ready"  # READY=1 is sent once


def test_watchdog_task_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}

    async def main() -> list[float]:
        task = start_watchdog(n, env)
        assert task is not None
        stamps: list[float] = []
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            while len(stamps) < 5:
                data = await loop.sock_recv(sock, 4096)
                assert data == b"WATCHDOG=1"
                stamps.append(time.monotonic())
        finally:
            await stop_watchdog(task)
            assert task.cancelled()
        return stamps

    stamps = asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # 0.1 s apart: never early (asyncio.sleep), and on average not far late (shared machine).
    assert min(gaps) > 0.08, gaps
    assert sum(gaps) / len(gaps) < 0.3, gaps


def test_no_watchdog_task_without_watchdog_env(listener: tuple[socket.socket, str]) -> None:
    _sock, path = listener

    async def main() -> None:
        assert start_watchdog(Notifier(path), {}) is None
        assert start_watchdog(Notifier(None), {"WATCHDOG_USEC": "100000"}) is None

    asyncio.run(main())
