"""The network config stored at ``<prefix>/config``: parsing, defaults and validation.

Follows Go flannel's ``pkg/subnet/config.go`` (``ParseConfig``, ``CheckNetworkConfig``): field
names are matched case-insensitively, SubnetLen/SubnetMin/SubnetMax and their IPv6 twins get
flannel's defaults and rules.  Dual stack (EnableIPv6) and IPv6-only (EnableIPv4 false) configs
parse completely; whether this implementation can run them yet is a separate question, answered
by ``unsupported_reason`` (asked by ``flannelctl config set`` and by the daemon).

A missing ``Backend`` falls back to ``udp``, as Go flanneld's code does (its docs say vxlan):
every node of a mixed cluster must pick the same backend from the same config.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar, cast

from flanneld.errors import NetworkConfigError
from flanneld.subnets import within

DEFAULT_BACKEND = "udp"

_V4_CIDR = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}/\d{1,2}", re.ASCII)
_V6_CIDR = re.compile(r"[0-9A-Fa-f:.]+/\d{1,3}", re.ASCII)

# The top-level fields as Go spells them (matched case-insensitively, like Go's decoder).
FIELD_NAMES = (
    "Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6",
    "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "EnableNFTables",
    "Backend",
)
_KNOWN_FIELDS = {name.lower() for name in FIELD_NAMES}


@dataclass(frozen=True)
class BackendConfig:
    """``Backend``: the type string (lower-cased) and its options as given (minus Type)."""

    type: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)


# Go's empty ip.IP4Net: what Network, SubnetLen, SubnetMin and SubnetMax hold in an IPv6-only
# config that does not set them (CheckNetworkConfig neither defaults nor checks them then).
NO_IPV4_NETWORK = IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config.  With ``enable_ipv4`` false (IPv6-only) the IPv4 fields are
    what the document said (syntax-checked only, as Go's decoder does) or Go's zero values
    (``NO_IPV4_NETWORK``, 0, 0.0.0.0); with ``enable_ipv6`` the ``ipv6_*`` fields are all set."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: BackendConfig
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    # Fields the config had that flannel does not know (reported, not fatal, as in Go).
    unknown_fields: tuple[str, ...] = ()
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None

    @property
    def subnet_count(self) -> int:
        """How many subnets lie between SubnetMin and SubnetMax, both included."""
        size = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // size + 1

    def contains_subnet(self, subnet: IPv4Network) -> bool:
        """True when a lease's subnet is one this config could have handed out."""
        return (
            subnet.prefixlen == self.subnet_len
            and within(subnet, self.network)
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    @property
    def ipv6_subnet_count(self) -> int:
        """How many IPv6 subnets lie between IPv6SubnetMin and IPv6SubnetMax (0 without IPv6)."""
        if self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return 0
        size = 1 << (128 - self.ipv6_subnet_len)
        return (int(self.ipv6_subnet_max) - int(self.ipv6_subnet_min)) // size + 1

    def contains_ipv6_subnet(self, subnet: IPv6Network | None) -> bool:
        """True when a lease's IPv6 half is one this config could have handed out: always
        false without EnableIPv6 (Go's ``isIPv6SubnetConfigCompat`` wants no half then, see
        ``ipv6_half_fits``)."""
        if subnet is None or self.ipv6_network is None:
            return False
        assert self.ipv6_subnet_min is not None and self.ipv6_subnet_max is not None
        return (
            subnet.prefixlen == self.ipv6_subnet_len
            and within(subnet, self.ipv6_network)
            and self.ipv6_subnet_min <= subnet.network_address <= self.ipv6_subnet_max
        )

    def ipv6_half_fits(self, subnet: IPv6Network | None) -> bool:
        """Go's ``isIPv6SubnetConfigCompat``: without EnableIPv6 a lease must have no IPv6
        half; with it, one inside IPv6SubnetMin..IPv6SubnetMax of IPv6SubnetLen."""
        if not self.enable_ipv6:
            return subnet is None
        return self.contains_ipv6_subnet(subnet)


def _bool(fields: dict[str, Any], key: str, name: str, default: bool) -> bool:
    value = fields.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise NetworkConfigError(name, f"must be true or false, got {value!r}")
    return value


def _int(fields: dict[str, Any], key: str, name: str) -> int:
    value = fields.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetworkConfigError(name, f"must be an integer, got {value!r}")
    if value < 0:
        raise NetworkConfigError(name, f"must not be negative, got {value}")
    return value


def _ipv4(fields: dict[str, Any], key: str, name: str) -> IPv4Address | None:
    value = fields.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise NetworkConfigError(name, f"must be an IPv4 address string, got {value!r}")
    try:
        return IPv4Address(value)
    except ValueError:
        raise NetworkConfigError(name, f"not an IPv4 address: {value!r}") from None


def _ipv6(fields: dict[str, Any], key: str, name: str) -> IPv6Address | None:
    """An IPv6 address field; None when absent, empty or ``::`` (Go's ``ip.IsEmpty``: the
    default is used then)."""
    value = fields.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise NetworkConfigError(name, f"must be an IPv6 address string, got {value!r}")
    try:
        if "%" in value:
            raise ValueError  # a zone: Go's net.ParseIP refuses it
        address = IPv6Address(value)
    except ValueError:
        raise NetworkConfigError(name, f"not an IPv6 address: {value!r}") from None
    return None if int(address) == 0 else address


def _backend(fields: dict[str, Any]) -> BackendConfig:
    raw = fields.get("backend")
    if raw is None:
        return BackendConfig(DEFAULT_BACKEND, {})
    if not isinstance(raw, dict):
        raise NetworkConfigError("Backend", f"must be a JSON object, got {raw!r}")
    options = {k: v for k, v in raw.items() if k.lower() != "type"}
    type_values = [v for k, v in raw.items() if k.lower() == "type"]
    btype = type_values[0] if type_values else DEFAULT_BACKEND
    if not isinstance(btype, str) or not btype:
        raise NetworkConfigError("Backend.Type", f"must be a non-empty string, got {btype!r}")
    return BackendConfig(btype.lower(), options)


def _ipv4_part(fields: dict[str, Any]) -> tuple[IPv4Network, int, IPv4Address, IPv4Address]:
    raw = fields.get("network")
    if not isinstance(raw, str) or not raw:
        raise NetworkConfigError("Network", f"is required (an IPv4 CIDR such as 10.244.0.0/16), got {raw!r}")
    try:
        if _V4_CIDR.fullmatch(raw) is None:
            raise ValueError  # Go's net.ParseCIDR takes no netmask form (10.0.0.0/255.0.0.0)
        network = IPv4Network(raw, strict=False)
    except ValueError:
        raise NetworkConfigError("Network", f"not an IPv4 CIDR: {raw!r}") from None

    subnet_len = _int(fields, "subnetlen", "SubnetLen")
    if subnet_len:
        if subnet_len > 30:
            raise NetworkConfigError("SubnetLen", f"must be /30 or shorter, got {subnet_len}")
        if subnet_len < network.prefixlen + 2:
            raise NetworkConfigError(
                "SubnetLen",
                f"/{subnet_len} leaves fewer than four subnets in {network}; "
                f"use at least /{network.prefixlen + 2}",
            )
    elif network.prefixlen > 28:
        raise NetworkConfigError(
            "Network", f"{network} is too small; the minimum useful network prefix is /28"
        )
    else:
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2

    subnet_min, subnet_max = _subnet_range(
        network, subnet_len, _ipv4(fields, "subnetmin", "SubnetMin"),
        _ipv4(fields, "subnetmax", "SubnetMax"), "")
    return network, subnet_len, subnet_min, subnet_max


A = TypeVar("A", IPv4Address, IPv6Address)


def _subnet_range(network: IPv4Network | IPv6Network, subnet_len: int, subnet_min: A | None,
                  subnet_max: A | None, family: str) -> tuple[A, A]:
    """``<family>SubnetMin`` / ``SubnetMax`` (family "" or "IPv6"): by default the second and
    the last subnet; else inside the network, on a subnet boundary, min <= max."""
    size = 1 << (network.max_prefixlen - subnet_len)
    first = network.network_address + size
    kind = type(first)
    lo = subnet_min if subnet_min is not None else cast(A, first)
    hi = subnet_max if subnet_max is not None else cast(
        A, kind(int(network.broadcast_address) + 1 - size))
    for name, value in (("SubnetMin", lo), ("SubnetMax", hi)):
        if value not in network:
            raise NetworkConfigError(f"{family}{name}",
                                     f"{value} is not inside {family}Network {network}")
    for name, value in (("SubnetMin", lo), ("SubnetMax", hi)):
        if int(value) & (size - 1):
            raise NetworkConfigError(f"{family}{name}",
                                     f"{value} is not on a /{subnet_len} boundary")
    if lo > hi:
        raise NetworkConfigError(f"{family}SubnetMin", f"{lo} is above {family}SubnetMax {hi}")
    return lo, hi


def _ipv6_part(fields: dict[str, Any]) -> tuple[IPv6Network, int, IPv6Address, IPv6Address]:
    """IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax: CheckNetworkConfig's IPv6 half,
    with the IPv4 half's rules (and its SubnetMin <= SubnetMax check, which Go lacks)."""
    raw = fields.get("ipv6network")
    if not isinstance(raw, str) or not raw:
        raise NetworkConfigError("IPv6Network", f"is required when EnableIPv6 is true, got {raw!r}")
    try:
        if _V6_CIDR.fullmatch(raw) is None:
            raise ValueError
        network = IPv6Network(raw, strict=False)
    except ValueError:
        raise NetworkConfigError("IPv6Network", f"not an IPv6 CIDR: {raw!r}") from None
    subnet_len = _int(fields, "ipv6subnetlen", "IPv6SubnetLen")
    if subnet_len:
        if subnet_len > 126:
            raise NetworkConfigError("IPv6SubnetLen", f"must be /126 or shorter, got {subnet_len}")
        if subnet_len < network.prefixlen + 2:
            raise NetworkConfigError(
                "IPv6SubnetLen",
                f"/{subnet_len} leaves fewer than four subnets in {network}; "
                f"use at least /{network.prefixlen + 2}",
            )
    elif network.prefixlen > 124:
        raise NetworkConfigError(
            "IPv6Network", f"{network} is too small; the minimum useful network prefix is /124"
        )
    else:
        subnet_len = 64 if network.prefixlen <= 62 else network.prefixlen + 2

    subnet_min, subnet_max = _subnet_range(
        network, subnet_len, _ipv6(fields, "ipv6subnetmin", "IPv6SubnetMin"),
        _ipv6(fields, "ipv6subnetmax", "IPv6SubnetMax"), "IPv6")
    return network, subnet_len, subnet_min, subnet_max


def _ipv4_unchecked(fields: dict[str, Any]) -> tuple[IPv4Network, int, IPv4Address, IPv4Address]:
    """The IPv4 fields of an IPv6-only config: as given (each syntax-checked, as Go's JSON
    decoder does) or Go's zero values; CheckNetworkConfig neither defaults nor checks them."""
    raw = fields.get("network")
    network = NO_IPV4_NETWORK
    if raw not in (None, ""):
        try:
            if not isinstance(raw, str) or _V4_CIDR.fullmatch(raw) is None:
                raise ValueError
            network = IPv4Network(raw, strict=False)
        except ValueError:
            raise NetworkConfigError("Network", f"not an IPv4 CIDR: {raw!r}") from None
    zero = IPv4Address(0)
    return (
        network,
        _int(fields, "subnetlen", "SubnetLen"),
        _ipv4(fields, "subnetmin", "SubnetMin") or zero,
        _ipv4(fields, "subnetmax", "SubnetMax") or zero,
    )


def parse_network_config(raw: bytes | str) -> NetworkConfig:
    """Parse and validate the network config JSON; raises NetworkConfigError naming the field."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise NetworkConfigError("(document)", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise NetworkConfigError("(document)", "not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise NetworkConfigError("(document)", f"must be a JSON object, got {type(obj).__name__}")
    return network_config_from_dict(obj)


def network_config_from_dict(obj: dict[str, Any]) -> NetworkConfig:
    fields = {k.lower(): v for k, v in obj.items()}
    unknown = tuple(sorted(k for k in obj if k.lower() not in _KNOWN_FIELDS))
    enable_ipv4 = _bool(fields, "enableipv4", "EnableIPv4", True)
    enable_ipv6 = _bool(fields, "enableipv6", "EnableIPv6", False)
    enable_nft = _bool(fields, "enablenftables", "EnableNFTables", False)
    backend = _backend(fields)

    ipv6_network: IPv6Network | None = None
    ipv6_len = 0
    ipv6_min: IPv6Address | None = None
    ipv6_max: IPv6Address | None = None
    if enable_ipv6:
        ipv6_network, ipv6_len, ipv6_min, ipv6_max = _ipv6_part(fields)
    if enable_ipv4:
        network, subnet_len, subnet_min, subnet_max = _ipv4_part(fields)
    elif enable_ipv6:
        network, subnet_len, subnet_min, subnet_max = _ipv4_unchecked(fields)
    else:
        raise NetworkConfigError("EnableIPv4", "at least one of EnableIPv4/EnableIPv6 must be true")
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=backend,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        enable_nftables=enable_nft,
        ipv6_network=ipv6_network,
        ipv6_subnet_len=ipv6_len,
        unknown_fields=unknown,
        ipv6_subnet_min=ipv6_min,
        ipv6_subnet_max=ipv6_max,
    )


# The field a refusal by ``unsupported_reason`` names (NetworkConfigError(UNSUPPORTED_FIELD, ...)).
UNSUPPORTED_FIELD = "EnableIPv6"


def unsupported_reason(netconf: NetworkConfig) -> str | None:
    """Why this implementation cannot run ``netconf`` yet (None: it can).  The one place that
    decides it: ``flannelctl config set`` refuses such a config and the daemon does not start
    with it, both as ``NetworkConfigError(UNSUPPORTED_FIELD, reason)``."""
    if not netconf.enable_ipv6:
        return None
    if not netconf.enable_ipv4:
        return "IPv6-only networks are not supported yet"
    if netconf.backend.type == "udp":
        return ("the udp backend carries IPv4 only (as Go flannel's); use vxlan or host-gw "
                "for a dual-stack network")
    return None


def json_syntax_error(exc: json.JSONDecodeError) -> str:
    """``JSON syntax error at line L, column C: <what>`` for a config an operator typed."""
    return f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"


def unknown_field_hints(obj: Mapping[str, Any]) -> list[str]:
    """One ``unknown key 'X' (did you mean 'Y'?)`` per top-level key flannel does not know
    (the daemons ignore such keys, as Go does, so a typo silently loses a setting)."""
    by_lower = {name.lower(): name for name in FIELD_NAMES}
    hints = []
    for key in obj:
        if not isinstance(key, str) or key.lower() in _KNOWN_FIELDS:
            continue
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
        hints.append(f"unknown key {key!r}"
                     + (f" (did you mean {by_lower[close[0]]!r}?)" if close else ""))
    return hints
