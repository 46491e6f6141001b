"""External interface selection: ``--iface`` (names or addresses, in order), ``--iface-regex``,
``--iface-can-reach``, else the interface of the default route; as Go flanneld's LookupExtIface.

The choosing is a pure function over a list of interfaces (unit-tested without root);
``select_external_interface`` only gathers that list from netlink and calls it.

Dual stack (``ipv6``): the chosen interface also gives the IPv6 underlay address, its first
global-scope IPv6 address (``--iface`` may name it instead of the interface); ``--public-ipv6``
overrides what goes into the lease as PublicIPv6.  A link-local (fe80::/10) address is never
chosen: peers cannot reach it through a route (Go falls back to one; here the daemon refuses
to start and says so).  One interface serves both families, as in Go (which also insists
that the IPv6 default route uses it; here the IPv4 choice decides).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from flanneld.backends.base import ExternalInterface
from flanneld.errors import ConfigError
from flanneld.netlink import AF_INET6, Netlink
from flanneld.netops import InterfaceInfo


def _parse_ip(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def _parse_ip6(text: str) -> IPv6Address | None:
    try:
        return IPv6Address(text)
    except ValueError:
        return None


def is_global_scope6(address: IPv6Address) -> bool:
    """True for what the kernel gives scope global: not link-local (fe80::/10), site-local
    (fec0::/10), loopback, multicast or unspecified.  Unique local (fc00::/7) is global."""
    return not (address.is_link_local or address.is_site_local or address.is_loopback
                or address.is_multicast or address.is_unspecified)


def _ipv6_address(info: InterfaceInfo, public_ipv6: IPv6Address | None) -> IPv6Address | None:
    for address in info.addresses6:
        if is_global_scope6(address):
            return address
    if public_ipv6 is not None:
        return None  # the lease says --public-ipv6; there is no local IPv6 underlay address
    has = (f"only {', '.join(str(a) for a in info.addresses6)} (not global scope)"
           if info.addresses6 else "no IPv6 address at all")
    raise ConfigError(f"interface {info.name} has no global IPv6 address (it has {has}); the "
                      "network config enables IPv6: add a global or unique local IPv6 address "
                      "to it, or pass --public-ipv6")


def _finish(info: InterfaceInfo, address: IPv4Address | None, public_ip: IPv4Address | None,
            *, ipv6: bool = False, address6: IPv6Address | None = None,
            public_ipv6: IPv6Address | None = None) -> ExternalInterface:
    if address is None:
        if not info.addresses:
            raise ConfigError(f"interface {info.name} has no IPv4 address")
        address = info.addresses[0]
    if info.mtu <= 0:
        raise ConfigError(f"interface {info.name} reports MTU {info.mtu}")
    if ipv6 and address6 is None:
        address6 = _ipv6_address(info, public_ipv6)
    return ExternalInterface(name=info.name, index=info.index, address=address,
                             public_ip=public_ip or address, mtu=info.mtu,
                             address6=address6 if ipv6 else None,
                             public_ipv6=(public_ipv6 or address6) if ipv6 else None)


def choose_interface(
    interfaces: Sequence[InterfaceInfo],
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    route_ifindex: int | None = None,
    route_source: str = "default route",
    public_ip: IPv4Address | None = None,
    ipv6: bool = False,
    public_ipv6: IPv6Address | None = None,
) -> ExternalInterface:
    """Pick the external interface.

    Precedence (Go flanneld's): each ``--iface`` in order, as an address of some interface or
    as a name; else each ``--iface-regex`` in order, matched against the interfaces' addresses
    first, then their names (loopback skipped); else the interface ``route_ifindex`` (the
    default route's, or the route to ``--iface-can-reach``).  The address is the matched one,
    or the interface's first IPv4 address; ``public_ip`` overrides what goes into the lease.

    ``ipv6`` (dual stack): ``address6`` is the interface's first global-scope IPv6 address (or
    the ``--iface`` IPv6 address that chose it), ``public_ipv6`` the flag or ``address6``; an
    interface without one is a ConfigError unless ``public_ipv6`` is given.
    """
    if iface:
        for wanted in iface:
            ip = _parse_ip(wanted)
            ip6 = _parse_ip6(wanted) if ipv6 else None
            if ip6 is not None and not is_global_scope6(ip6):
                raise ConfigError(f"--iface {wanted}: not a global-scope IPv6 address (a "
                                  "link-local address cannot be the IPv6 underlay)")
            for info in interfaces:
                if ip6 is not None and ip6 in info.addresses6:
                    return _finish(info, None, public_ip, ipv6=ipv6, address6=ip6,
                                   public_ipv6=public_ipv6)
                if (ip is not None and ip in info.addresses) or info.name == wanted:
                    return _finish(info, ip, public_ip, ipv6=ipv6, public_ipv6=public_ipv6)
        raise ConfigError(f"no interface matches --iface {', '.join(iface)} "
                          f"(have: {', '.join(i.name for i in interfaces)})")
    if iface_regex:
        candidates = [i for i in interfaces if not i.loopback]
        for pattern in iface_regex:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"--iface-regex {pattern!r}: {exc}") from None
            for info in candidates:
                for addr in info.addresses:
                    if rx.match(str(addr)):
                        return _finish(info, addr, public_ip, ipv6=ipv6, public_ipv6=public_ipv6)
            for info in candidates:
                if rx.match(info.name):
                    return _finish(info, None, public_ip, ipv6=ipv6, public_ipv6=public_ipv6)
        raise ConfigError(f"no interface matches --iface-regex {', '.join(iface_regex)}")
    if route_ifindex is None:
        raise ConfigError(f"no {route_source} to choose the external interface from; "
                          "pass --iface or --iface-regex")
    for info in interfaces:
        if info.index == route_ifindex:
            return _finish(info, None, public_ip, ipv6=ipv6, public_ipv6=public_ipv6)
    raise ConfigError(f"the {route_source} uses interface index {route_ifindex}, which vanished")


async def select_external_interface(
    netlink: Netlink,
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    can_reach: IPv4Address | None = None,
    public_ip: IPv4Address | None = None,
    ipv6: bool = False,
    public_ipv6: IPv6Address | None = None,
) -> ExternalInterface:
    """Gather interfaces (and the default route / route to ``can_reach``) and choose; with
    ``ipv6`` the interfaces' IPv6 addresses too (see ``choose_interface``)."""
    interfaces = await netlink.interfaces()
    if ipv6:
        v6 = {info.index: info.addresses6 for info in await netlink.interfaces(family=AF_INET6)}
        interfaces = [dataclasses.replace(i, addresses6=v6.get(i.index, ())) for i in interfaces]
    route_ifindex: int | None = None
    source = "default route"
    if not iface and not iface_regex:
        if can_reach is not None:
            source = f"route to --iface-can-reach {can_reach}"
            route = (await netlink.route_get([can_reach]))[0]
            route_ifindex = route.ifindex if route is not None else None
        else:
            route_ifindex = await netlink.default_route_ifindex()
    return choose_interface(interfaces, iface=iface, iface_regex=iface_regex,
                            route_ifindex=route_ifindex, route_source=source,
                            public_ip=public_ip, ipv6=ipv6, public_ipv6=public_ipv6)
