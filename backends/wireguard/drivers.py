"""Choosing the WireGuard driver (``--wireguard-driver auto|kernel|userspace``).

``auto``: userspace when a wireguard-go already serves one of the backend's devices (a previous
run left it running: switching now would cut the pods off), else the kernel driver when the
kernel has WireGuard (its generic netlink family resolves), else userspace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flanneld.backends.wireguard.driver import DRIVERS, Driver, WireguardDriverError
from flanneld.backends.wireguard.kernel import KernelDriver, kernel_support
from flanneld.backends.wireguard.userspace import UserspaceDriver

log = logging.getLogger(__name__)

DEVICES = ("flannel-wg", "flannel-wg-v6")  # the backend's device names


async def choose_driver(name: str, devices: Sequence[str] = DEVICES,
                        log_dir: str = "/run/flannel") -> Driver:
    """The driver ``name`` names; for ``auto`` the one this machine supports (see the doc).
    ``log_dir``: where wireguard-go's output goes (the key file's directory)."""
    if name == "kernel":
        return KernelDriver()
    if name == "userspace":
        return UserspaceDriver(log_dir=log_dir)
    if name != "auto":
        raise WireguardDriverError(f"unknown WireGuard driver {name!r} "
                                   f"(one of {', '.join(DRIVERS)})")
    userspace = UserspaceDriver(log_dir=log_dir)
    for dev in devices:
        if await userspace.running(dev):
            log.info("wireguard driver auto: userspace (wireguard-go already serves %s)", dev)
            return userspace
    reason = await kernel_support()
    if reason is None:
        log.info("wireguard driver auto: kernel (the kernel has WireGuard)")
        return KernelDriver()
    log.info("wireguard driver auto: userspace (%s)", reason)
    return userspace
