"""Interface selection: the pure chooser (unit) and the netlink lookups (in a namespace), for
IPv4 and dual stack (the IPv6 underlay address: the first global-scope one, never link-local)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address as A
from ipaddress import IPv6Address as A6

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
# dual stack: the kernel lists link-local and site-local addresses too
ETH0_6 = InterfaceInfo("eth0", 2, 1500, True, (A("198.18.0.1"), A("198.18.0.5")),
                       addresses6=(A6("fe80::1"), A6("fec0::1"), A6("2001:db8:18::1"),
                                   A6("2001:db8:18::5")))
ETH1_6 = InterfaceInfo("eth1", 3, 9000, True, (A("198.19.0.1"),),
                       addresses6=(A6("fe80::2"), A6("fd00:19::1")))  # a ULA is global scope
LINK_LOCAL = InterfaceInfo("ll0", 5, 1500, True, (A("198.20.0.1"),), addresses6=(A6("fe80::5"),))
ALL6 = [LO, ETH0_6, ETH1_6, BARE, LINK_LOCAL]


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


@pytest.mark.unit
def test_ipv6_address_is_the_first_global_one_of_the_chosen_interface() -> None:
    ext = choose_interface(ALL6, iface=["eth0"], ipv6=True)
    assert (ext.address, ext.address6, ext.public_ipv6) == (
        A("198.18.0.1"), A6("2001:db8:18::1"), A6("2001:db8:18::1"))
    ext = choose_interface(ALL6, iface=["eth0"], ipv6=True, public_ipv6=A6("2001:db8:99::1"))
    assert (ext.address6, ext.public_ipv6) == (A6("2001:db8:18::1"), A6("2001:db8:99::1"))
    # every way of choosing fills it: regex, default route, an IPv4 or IPv6 --iface address
    assert choose_interface(ALL6, iface_regex=[r"198\.19\."], ipv6=True).address6 == A6("fd00:19::1")
    assert choose_interface(ALL6, route_ifindex=2, ipv6=True).address6 == A6("2001:db8:18::1")
    assert choose_interface(ALL6, iface=["198.18.0.5"], ipv6=True).address6 == A6("2001:db8:18::1")
    ext = choose_interface(ALL6, iface=["2001:db8:18::5"], ipv6=True)
    assert (ext.name, ext.address, ext.address6) == ("eth0", A("198.18.0.1"), A6("2001:db8:18::5"))
    # without IPv6 nothing of it is filled, whatever the interface has or the flag says
    ext = choose_interface(ALL6, iface=["eth0"], public_ipv6=A6("2001:db8:99::1"))
    assert (ext.address6, ext.public_ipv6) == (None, None)


@pytest.mark.unit
def test_ipv6_without_a_global_address_is_refused_naming_what_there_is() -> None:
    with pytest.raises(ConfigError, match=r"interface ll0 has no global IPv6 address \(it has "
                                          r"only fe80::5 \(not global scope\)\).*--public-ipv6"):
        choose_interface(ALL6, iface=["ll0"], ipv6=True)
    with pytest.raises(ConfigError, match=r"interface eth1 has no global IPv6 address \(it has "
                                          r"no IPv6 address at all\)"):
        choose_interface(ALL, iface_regex=["^eth1"], ipv6=True)
    with pytest.raises(ConfigError, match="bare0 has no IPv4 address"):  # that is said first
        choose_interface(ALL6, iface=["bare0"], ipv6=True)
    # --public-ipv6 says what goes into the lease; there is no local IPv6 underlay address
    ext = choose_interface(ALL6, iface=["ll0"], ipv6=True, public_ipv6=A6("2001:db8:18::7"))
    assert (ext.address6, ext.public_ipv6) == (None, A6("2001:db8:18::7"))
    with pytest.raises(ConfigError, match="--iface fe80::1: not a global-scope IPv6 address"):
        choose_interface(ALL6, iface=["fe80::1"], ipv6=True)


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


@pytest.mark.netlink
def test_dual_stack_lookups_in_namespace(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("if6")
    for knob in ("all", "default"):
        sh("sysctl", "-qw", f"net.ipv6.conf.{knob}.accept_dad=0", ns=ns)
    sh("ip", "link", "add", "fknla", "type", "veth", "peer", "name", "fknlb", ns=ns)
    sh("ip", "link", "add", "fknlc", "type", "veth", "peer", "name", "fknld", ns=ns)
    sh("ip", "addr", "add", "198.18.3.1/24", "dev", "fknla", ns=ns)
    sh("ip", "addr", "add", "198.18.4.1/24", "dev", "fknlc", ns=ns)
    # fknla: a link-local address listed before its global one; fknlc: link-local only
    sh("ip", "-6", "addr", "add", "fe80::a/64", "dev", "fknla", "nodad", ns=ns)
    sh("ip", "-6", "addr", "add", "2001:db8:18::1/64", "dev", "fknla", "nodad", ns=ns)
    sh("ip", "-6", "addr", "add", "fe80::c/64", "dev", "fknlc", "nodad", ns=ns)
    for link in ("fknla", "fknlb", "fknlc", "fknld"):
        sh("ip", "link", "set", link, "up", ns=ns)
    sh("ip", "route", "add", "default", "via", "198.18.3.254", "dev", "fknla", ns=ns)

    async def main() -> None:
        async with Netlink(ns) as nl:
            ext = await select_external_interface(nl, ipv6=True)
            assert (ext.name, ext.address, ext.address6, ext.public_ipv6) == (
                "fknla", A("198.18.3.1"), A6("2001:db8:18::1"), A6("2001:db8:18::1"))
            assert (await select_external_interface(nl)).address6 is None  # IPv4 only
            by_ip6 = await select_external_interface(nl, iface=["2001:db8:18::1"], ipv6=True)
            assert by_ip6.index == ext.index
            with pytest.raises(ConfigError, match=r"interface fknlc has no global IPv6 address "
                                                  r"\(it has only fe80::"):
                await select_external_interface(nl, iface=["fknlc"], ipv6=True)
            flag = await select_external_interface(nl, iface=["fknlc"], ipv6=True,
                                                   public_ipv6=A6("2001:db8:18::4"))
            assert (flag.address, flag.address6, flag.public_ipv6) == (
                A("198.18.4.1"), None, A6("2001:db8:18::4"))

    asyncio.run(main())
