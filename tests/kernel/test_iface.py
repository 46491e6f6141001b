"""Interface selection: the pure chooser (unit) and the netlink lookups (in a namespace)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address as A

import pytest

from flanneld.errors import ConfigError
from flanneld.iface import choose_interface, select_external_interface
from flanneld.netlink import Netlink
from flanneld.netops import InterfaceInfo

from .conftest import sh

LO = InterfaceInfo("lo", 1, 65536, True, (A("127.0.0.1"),), loopback=True)
ETH0 = InterfaceInfo("eth0", 2, 1500, True, (A("198.18.0.1"), A("198.18.0.5")))
ETH1 = InterfaceInfo("eth1", 3, 9000, True, (A("198.19.0.1"),))
BARE = InterfaceInfo("bare0", 4, 1500, True, ())
ALL = [LO, ETH0, ETH1, BARE]


@pytest.mark.unit
def test_iface_by_name_and_address_in_order() -> None:
    ext = choose_interface(ALL, iface=["nope", "eth1", "eth0"])
    assert (ext.name, ext.index, ext.address, ext.public_ip, ext.mtu) == (
        "eth1", 3, A("198.19.0.1"), A("198.19.0.1"), 9000)
    ext = choose_interface(ALL, iface=["198.18.0.5"])
    assert (ext.name, ext.address) == ("eth0", A("198.18.0.5"))
    ext = choose_interface(ALL, iface=["eth0"], public_ip=A("198.18.9.9"))
    assert (ext.address, ext.public_ip) == (A("198.18.0.1"), A("198.18.9.9"))
    with pytest.raises(ConfigError, match="no interface matches --iface"):
        choose_interface(ALL, iface=["eth7"])
    with pytest.raises(ConfigError, match="bare0 has no IPv4 address"):
        choose_interface(ALL, iface=["bare0"])


@pytest.mark.unit
def test_iface_regex_addresses_first_then_names() -> None:
    assert choose_interface(ALL, iface_regex=[r"198\.19\."]).name == "eth1"
    ext = choose_interface(ALL, iface_regex=[r"198\.18\.0\.5"])
    assert (ext.name, ext.address) == ("eth0", A("198.18.0.5"))
    assert choose_interface(ALL, iface_regex=["^eth"]).name == "eth0"
    assert choose_interface(ALL, iface_regex=["nomatch", "eth1"]).name == "eth1"
    with pytest.raises(ConfigError, match="no interface matches --iface-regex"):
        choose_interface(ALL, iface_regex=["^lo$"])  # loopback is never chosen by regex
    with pytest.raises(ConfigError, match="--iface-regex"):
        choose_interface(ALL, iface_regex=["("])


@pytest.mark.unit
def test_default_route_interface() -> None:
    assert choose_interface(ALL, route_ifindex=3).name == "eth1"
    with pytest.raises(ConfigError, match="no default route"):
        choose_interface(ALL, route_ifindex=None)


@pytest.mark.netlink
def test_lookups_in_namespace(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("if")
    sh("ip", "link", "add", "fknla", "mtu", "1400", "type", "veth", "peer", "name", "fknlb",
       ns=ns)
    sh("ip", "addr", "add", "198.18.3.1/24", "dev", "fknla", ns=ns)
    sh("ip", "link", "set", "fknla", "up", ns=ns)

    async def main() -> None:
        async with Netlink(ns) as nl:
            with pytest.raises(ConfigError, match="no default route"):
                await select_external_interface(nl)
            sh("ip", "route", "add", "default", "via", "198.18.3.254", "dev", "fknla", ns=ns)
            ext = await select_external_interface(nl)
            assert (ext.name, ext.address, ext.mtu) == ("fknla", A("198.18.3.1"), 1400)
            reach = await select_external_interface(nl, can_reach=A("198.18.3.77"))
            assert reach.name == "fknla"
            by_ip = await select_external_interface(nl, iface=["198.18.3.1"])
            assert by_ip.index == ext.index

    asyncio.run(main())
