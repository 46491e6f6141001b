"""Netlink setup of the udp backend's TUN: `<subnet .0>/32` and a device route for the Network.

Why: Go flannel's udp backend (configureIface) gives flannel0 a /32 address (no broadcast
routes; it is only the source for host-to-pod traffic) and adds the Network route explicitly,
since a more specific route may already exist.  The ops go through the project's one netlink
applier (flanneld.netlink); the daemon's UDPBackend and the standalone datapath CLI share them.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

from flanneld.netops import Address, Replace, Route


def device_ops(ifindex: int, subnet: IPv4Network, network: IPv4Network) -> list[Replace]:
    """The address and the Network route for a TUN (pure)."""
    return [Replace(Address(ifindex, IPv4Address(subnet.network_address), 32)),
            Replace(Route(network, ifindex))]


def configure(ifindex: int, subnet: str | IPv4Network, network: str | IPv4Network) -> None:
    """Blocking: apply ``device_ops`` (for the standalone CLI, before its event loop runs)."""
    from flanneld.netlink import KernelError, Netlink

    async def apply() -> None:
        async with Netlink() as netlink:
            outcomes = await netlink.apply(
                device_ops(ifindex, IPv4Network(subnet), IPv4Network(network)))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise KernelError(f"configuring the TUN failed: {failed[0].op}: {failed[0].message}",
                              failed[0].errno)

    asyncio.run(apply())
