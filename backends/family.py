"""The two halves of a dual-stack lease, as a backend's networks see them.

One etcd key holds both halves of a node's lease (``10.244.1.0-24&fc00::-64``): the IPv4 half
(``Lease.subnet``, ``PublicIP``, ``BackendData``) and the IPv6 half (``Lease.ipv6_subnet``,
``PublicIPv6``, ``BackendV6Data``).  A dual-stack node runs one kernel network per half; each
reads its half through one of these two values, so the networks have no per-family code.
"""

from __future__ import annotations

from dataclasses import dataclass

from flanneld.lease import Lease, LeaseAttrs
from flanneld.netconfig import NetworkConfig
from flanneld.netops import AF_INET, AF_INET6, IPAddress, IPNetwork


@dataclass(frozen=True)
class Half:
    family: int  # AF_INET or AF_INET6
    name: str  # "IPv4" / "IPv6", for messages
    host_prefix: int  # 32 / 128: a device address of one host

    @property
    def v6(self) -> bool:
        return self.family == AF_INET6

    def subnet(self, lease: Lease) -> IPNetwork | None:
        return lease.ipv6_subnet if self.v6 else lease.subnet

    def public_ip(self, attrs: LeaseAttrs) -> IPAddress | None:
        return attrs.public_ipv6 if self.v6 else attrs.public_ip

    def backend_data(self, attrs: LeaseAttrs) -> str:
        return attrs.backend_v6_data if self.v6 else attrs.backend_data

    def network(self, netconf: NetworkConfig) -> IPNetwork | None:
        return netconf.ipv6_network if self.v6 else netconf.network

    def subnet_len(self, netconf: NetworkConfig) -> int:
        return netconf.ipv6_subnet_len if self.v6 else netconf.subnet_len


V4 = Half(AF_INET, "IPv4", 32)
V6 = Half(AF_INET6, "IPv6", 128)


def halves(netconf: NetworkConfig) -> tuple[Half, ...]:
    """The halves a network config enables, IPv4 first."""
    return tuple(h for h, on in ((V4, netconf.enable_ipv4), (V6, netconf.enable_ipv6)) if on)
