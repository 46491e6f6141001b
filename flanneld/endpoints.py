"""The addresses behind ``--etcd-endpoints``: no peer's lease may cover them."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit


async def etcd_addresses(endpoints: str) -> set[Any]:
    """The addresses of the etcd endpoints (names resolved, best effort: a name that does not
    resolve now protects nothing, and the daemon's own etcd client will say why)."""
    out: set[Any] = set()
    loop = asyncio.get_running_loop()
    for raw in (part.strip() for part in endpoints.split(",")):
        if not raw:
            continue
        host = urlsplit(raw if "://" in raw else f"http://{raw}").hostname or ""
        try:
            out.add(ipaddress.ip_address(host))
            continue
        except ValueError:
            pass
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2.0):  # not wait_for: see backoff.wait_or_stop
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            out.update(ipaddress.ip_address(info[4][0]) for info in infos)
    return out
