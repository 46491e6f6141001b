"""Build backends inside test namespaces: a config, leases and the external interface."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from flanneld.backends.base import BackendContext
from flanneld.iface import select_external_interface
from flanneld.lease import Lease, LeaseAttrs
from flanneld.netconfig import network_config_from_dict
from flanneld.netlink import Netlink

from .conftest import sh

SUBNETS = (IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24"))


async def context(nl: Netlink, link: str, backend: dict[str, object]) -> BackendContext:
    netconf = network_config_from_dict({"Network": "10.244.0.0/16", "Backend": backend})
    ext = await select_external_interface(nl, iface=[link])
    return BackendContext(ext=ext, netconf=netconf)


def lease(subnet: IPv4Network, attrs: LeaseAttrs) -> Lease:
    return Lease(subnet, attrs, expiration=None, etcd_lease_id=1)


def ping(ns: str, src: IPv4Address | str, dst: IPv4Address | str) -> bool:
    out = sh("ping", "-c", "1", "-W", "2", "-I", str(src), str(dst), ns=ns, check=False)
    return " 0% packet loss" in out
