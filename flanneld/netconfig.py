"""The network config stored at ``<prefix>/config``: parsing, defaults and validation.

Follows Go flannel's ``pkg/subnet/config.go``: field names are matched case-insensitively,
SubnetLen/SubnetMin/SubnetMax get flannel's defaults and rules.  IPv6 fields are parsed and
checked, but dual stack and IPv6-only networks are refused with "not supported yet".

A missing ``Backend`` falls back to ``udp``, as Go flanneld's code does (its docs say vxlan):
every node of a mixed cluster must pick the same backend from the same config.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

from flanneld.errors import NetworkConfigError

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


@dataclass(frozen=True)
class NetworkConfig:
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

    @property
    def subnet_count(self) -> int:
        """How many subnets lie between SubnetMin and SubnetMax, both included."""
        size = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // size + 1

    def contains_subnet(self, subnet: IPv4Network) -> bool:
        """True when a lease's subnet is one this config could have handed out."""
        return (
            subnet.prefixlen == self.subnet_len
            and subnet.subnet_of(self.network)
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


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

    size = 1 << (32 - subnet_len)
    subnet_min = _ipv4(fields, "subnetmin", "SubnetMin")
    subnet_max = _ipv4(fields, "subnetmax", "SubnetMax")
    if subnet_min is None:
        subnet_min = network.network_address + size
    elif subnet_min not in network:
        raise NetworkConfigError("SubnetMin", f"{subnet_min} is not inside Network {network}")
    if subnet_max is None:
        subnet_max = IPv4Address(int(network.broadcast_address) + 1 - size)
    elif subnet_max not in network:
        raise NetworkConfigError("SubnetMax", f"{subnet_max} is not inside Network {network}")
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    if int(subnet_min) & mask != int(subnet_min):
        raise NetworkConfigError("SubnetMin", f"{subnet_min} is not on a /{subnet_len} boundary")
    if int(subnet_max) & mask != int(subnet_max):
        raise NetworkConfigError("SubnetMax", f"{subnet_max} is not on a /{subnet_len} boundary")
    if subnet_min > subnet_max:
        raise NetworkConfigError("SubnetMin", f"{subnet_min} is above SubnetMax {subnet_max}")
    return network, subnet_len, subnet_min, subnet_max


def _ipv6_part(fields: dict[str, Any]) -> tuple[IPv6Network, int]:
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
                "IPv6SubnetLen", f"/{subnet_len} leaves fewer than four subnets in {network}"
            )
    elif network.prefixlen > 126:
        raise NetworkConfigError("IPv6Network", f"{network} is too small")
    else:
        subnet_len = 64 if network.prefixlen <= 62 else network.prefixlen + 2
    return network, subnet_len


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
    if enable_ipv6:
        ipv6_network, ipv6_len = _ipv6_part(fields)
    if not enable_ipv4:
        if enable_ipv6:
            raise NetworkConfigError("EnableIPv6", "IPv6-only networks are not supported yet")
        raise NetworkConfigError("EnableIPv4", "at least one of EnableIPv4/EnableIPv6 must be true")
    network, subnet_len, subnet_min, subnet_max = _ipv4_part(fields)
    if enable_ipv6:
        raise NetworkConfigError("EnableIPv6", "dual stack (IPv4 + IPv6) is not supported yet")
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
    )


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
