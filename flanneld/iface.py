"""External interface selection: ``--iface`` (names or addresses, in order), ``--iface-regex``,
``--iface-can-reach``, else the interface of the default route; as Go flanneld's LookupExtIface.

The choosing is a pure function over a list of interfaces (unit-tested without root);
``select_external_interface`` only gathers that list from netlink and calls it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address

from flanneld.backends.base import ExternalInterface
from flanneld.errors import ConfigError
from flanneld.netlink import Netlink
from flanneld.netops import InterfaceInfo


def _parse_ip(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def _finish(info: InterfaceInfo, address: IPv4Address | None,
            public_ip: IPv4Address | None) -> ExternalInterface:
    if address is None:
        if not info.addresses:
            raise ConfigError(f"interface {info.name} has no IPv4 address")
        address = info.addresses[0]
    if info.mtu <= 0:
        raise ConfigError(f"interface {info.name} reports MTU {info.mtu}")
    return ExternalInterface(name=info.name, index=info.index, address=address,
                             public_ip=public_ip or address, mtu=info.mtu)


def choose_interface(
    interfaces: Sequence[InterfaceInfo],
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    route_ifindex: int | None = None,
    route_source: str = "default route",
    public_ip: IPv4Address | None = None,
) -> ExternalInterface:
    """Pick the external interface.

    Precedence (Go flanneld's): each ``--iface`` in order, as an address of some interface or
    as a name; else each ``--iface-regex`` in order, matched against the interfaces' addresses
    first, then their names (loopback skipped); else the interface ``route_ifindex`` (the
    default route's, or the route to ``--iface-can-reach``).  The address is the matched one,
    or the interface's first IPv4 address; ``public_ip`` overrides what goes into the lease.
    """
    if iface:
        for wanted in iface:
            ip = _parse_ip(wanted)
            for info in interfaces:
                if (ip is not None and ip in info.addresses) or info.name == wanted:
                    return _finish(info, ip if ip is not None else None, public_ip)
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
                        return _finish(info, addr, public_ip)
            for info in candidates:
                if rx.match(info.name):
                    return _finish(info, None, public_ip)
        raise ConfigError(f"no interface matches --iface-regex {', '.join(iface_regex)}")
    if route_ifindex is None:
        raise ConfigError(f"no {route_source} to choose the external interface from; "
                          "pass --iface or --iface-regex")
    for info in interfaces:
        if info.index == route_ifindex:
            return _finish(info, None, public_ip)
    raise ConfigError(f"the {route_source} uses interface index {route_ifindex}, which vanished")


async def select_external_interface(
    netlink: Netlink,
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    can_reach: IPv4Address | None = None,
    public_ip: IPv4Address | None = None,
) -> ExternalInterface:
    """Gather interfaces (and the default route / route to ``can_reach``) and choose."""
    interfaces = await netlink.interfaces()
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
                            public_ip=public_ip)
