"""The two ways a WireGuard device exists, behind one interface.

- ``kernel``: the kernel module.  The link is made with rtnetlink (kind ``wireguard``) and
  configured over WireGuard's generic netlink family (``kernel.KernelDriver``).
- ``userspace``: ``wireguard-go`` makes a TUN device of that name and serves the
  cross-platform UAPI text protocol on ``/var/run/wireguard/<dev>.sock``
  (``userspace.UserspaceDriver``).  The process is supervised (restarted when it dies), left
  running when the daemon stops (pods keep talking across a daemon restart) and re-attached
  on start.

``auto`` picks the kernel driver when the kernel can make a ``wireguard`` link, else userspace.
The backend configures the device through ``configure`` / ``state`` only; addresses, MTU and
routes of the device are rtnetlink's business in both cases (the daemon's ``Netlink``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flanneld.backends.wireguard.model import DeviceConfig, DeviceState

DRIVERS = ("auto", "kernel", "userspace")


class WireguardDriverError(Exception):
    """The device could not be made, reached or configured (a clear one-line reason)."""


class Driver(Protocol):
    name: str  # "kernel" or "userspace", as logged at start

    async def ensure_device(self, ifname: str) -> bool:
        """Make the device exist (create it, or attach to the one that is there); True when
        it was created now (its addresses, MTU, routes and peers are then to be set)."""
        ...

    async def configure(self, ifname: str, config: DeviceConfig) -> None:
        """Apply one configuration request (WireguardDriverError on refusal)."""
        ...

    async def state(self, ifname: str) -> DeviceState:
        """The device's settings and peers as it reports them."""
        ...

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(ifname)`` when a device was lost and made again (userspace:
        wireguard-go died and was restarted): everything on it has to be set again."""
        ...

    async def close(self) -> None:
        """Stop supervising; the devices stay."""
        ...
