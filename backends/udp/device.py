"""Netlink setup of the udp backend's TUN: `<subnet .0>/32` and a device route for the Network.

Why: Go flannel's udp backend (configureIface) gives flannel0 a /32 address (no broadcast
routes; it is only the source for host-to-pod traffic) and adds the Network route explicitly,
since a more specific route may already exist. Kept apart from `tun.py` so the datapath itself
never imports pyroute2 (which cannot run under uvloop).
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute


def configure(ifname: str, subnet: str | ipaddress.IPv4Network,
              network: str | ipaddress.IPv4Network) -> None:
    """Idempotently put `<subnet .0>/32` on `ifname` and route `network` through it."""
    sub = ipaddress.IPv4Network(subnet)
    net = ipaddress.IPv4Network(network)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LookupError(f"no interface {ifname}")
        ipr.addr("replace", index=idx[0], address=str(sub.network_address), prefixlen=32)
        ipr.link("set", index=idx[0], state="up")
        ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen, oif=idx[0],
                  scope=0)
