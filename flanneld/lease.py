"""Subnet leases: the etcd key names and the lease JSON, byte-compatible with Go flannel.

Go flannel stores one key per node under ``<prefix>/subnets/<a.b.c.d>-<len>`` whose value is
``subnet.LeaseAttrs`` marshalled by encoding/json: fields in struct order, ``PublicIPv6`` written
as ``null`` when unset, ``BackendType``/``BackendData``/``BackendV6Data`` omitted when empty.
Reading is case-insensitive on field names, like Go's decoder.  Everything here is pure.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    NetmaskValueError,
)
from typing import Any

from flanneld.errors import LeaseDecodeError

DEFAULT_PREFIX = "/coreos.com/network"


def _compact(obj: Any) -> str:
    """JSON exactly as Go's encoding/json writes it (no spaces, key order kept)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a node publishes about itself in its lease value."""

    public_ip: IPv4Address
    backend_type: str = ""
    # Compact JSON text of BackendData / BackendV6Data (Go keeps them as json.RawMessage).
    backend_data: str = ""
    public_ipv6: IPv6Address | None = None
    backend_v6_data: str = ""

    def backend_data_obj(self) -> dict[str, Any]:
        """BackendData decoded; {} when absent or not a JSON object."""
        return backend_data_object(self.backend_data)

    def to_json(self) -> str:
        """The lease value exactly as Go flannel writes it."""
        parts = [
            f'"PublicIP":{_compact(str(self.public_ip))}',
            '"PublicIPv6":' + (_compact(str(self.public_ipv6)) if self.public_ipv6 else "null"),
        ]
        if self.backend_type:
            parts.append(f'"BackendType":{_compact(self.backend_type)}')
        if self.backend_data:
            parts.append(f'"BackendData":{self.backend_data}')
        if self.backend_v6_data:
            parts.append(f'"BackendV6Data":{self.backend_v6_data}')
        return "{" + ",".join(parts) + "}"


def backend_data_object(text: str) -> dict[str, Any]:
    """BackendData (or BackendV6Data) text decoded; {} when absent or not a JSON object;
    ValueError when it is not JSON."""
    if not text:
        return {}
    obj = json.loads(text)
    return obj if isinstance(obj, dict) else {}


def make_backend_data(obj: dict[str, Any] | None) -> str:
    """Compact BackendData text for an options object (field order as given)."""
    return _compact(obj) if obj else ""


def decode_lease_attrs(raw: bytes | str) -> LeaseAttrs:
    """Parse a lease value; raises LeaseDecodeError naming the field that is wrong."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LeaseDecodeError(f"lease value is not JSON: {exc}") from None
    except RecursionError:
        raise LeaseDecodeError("lease value is not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise LeaseDecodeError(f"lease value must be a JSON object, got {type(obj).__name__}")
    fields = {k.lower(): v for k, v in obj.items()}

    pub = fields.get("publicip")
    if not isinstance(pub, str):
        raise LeaseDecodeError(f"PublicIP: must be an IPv4 address string, got {pub!r}")
    try:
        public_ip = IPv4Address(pub)
    except AddressValueError:
        raise LeaseDecodeError(f"PublicIP: not an IPv4 address: {pub!r}") from None

    pub6 = fields.get("publicipv6")
    public_ipv6: IPv6Address | None = None
    if pub6 is not None:
        if not isinstance(pub6, str):
            raise LeaseDecodeError(f"PublicIPv6: must be an IPv6 address string or null, got {pub6!r}")
        try:
            if "%" in pub6:
                raise AddressValueError  # a zone: Go's net.ParseIP refuses it
            public_ipv6 = IPv6Address(pub6)
        except AddressValueError:
            raise LeaseDecodeError(f"PublicIPv6: not an IPv6 address: {pub6!r}") from None

    btype = fields.get("backendtype", "")
    if btype is None:
        btype = ""
    if not isinstance(btype, str):
        raise LeaseDecodeError(f"BackendType: must be a string, got {btype!r}")
    btype = sys.intern(btype)  # one "vxlan" for 5000 leases, not 5000 (~270 KB)

    def raw_json(name: str) -> str:
        value = fields.get(name.lower())
        if value is None:
            return ""
        if not isinstance(value, dict):
            raise LeaseDecodeError(f"{name}: must be a JSON object, got {value!r}")
        return _compact(value) if value else ""

    return LeaseAttrs(
        public_ip=public_ip,
        backend_type=btype,
        backend_data=raw_json("BackendData"),
        public_ipv6=public_ipv6,
        backend_v6_data=raw_json("BackendV6Data"),
    )


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet held by a node: the key, the value and the etcd lease behind it."""

    subnet: IPv4Network
    attrs: LeaseAttrs
    # Unix time the etcd lease runs out; None for a reservation (a key with no etcd lease).
    expiration: float | None = None
    etcd_lease_id: int = 0
    ipv6_subnet: IPv6Network | None = None
    # etcd mod revision of the key (0 when unknown); used to order updates.
    revision: int = field(default=0, compare=False)
    # etcd create revision of the key (0 when unknown): orders competing claims on a subnet.
    created: int = field(default=0, compare=False)

    @property
    def reserved(self) -> bool:
        return self.etcd_lease_id == 0

    @property
    def key(self) -> str:
        return subnet_key(self.subnet, self.ipv6_subnet)


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """`10.5.52.0-24`, or `10.5.52.0-24&fc00:0:0:5::-64` for dual stack."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address.compressed}-{ipv6_subnet.prefixlen}"
    return key


# Go flannel's key pattern, ``(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$``, made strict:
# ASCII digits, no leading zeros in a prefix length, an IPv4 prefix length of 0..31 and an IPv6
# one of 0..127 (Go parses them as 5 and 7 bit numbers), the IPv6 half in lowercase hex and
# colons only (no zone, no dotted tail).
_V4_KEY = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})-(0|[1-9]|[12]\d|3[01])", re.ASCII)
_V6_KEY = re.compile(r"([0-9a-f:]+)-(0|[1-9]\d{0,2})", re.ASCII)
_V6_MAX_PREFIX = 127


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """Inverse of subnet_key; accepts the full etcd key or just its last path component.

    As strict as Go flannel's key pattern, and canonical on top: ASCII digits, no leading zeros,
    the network address as ``subnet_key`` writes it (IPv4 dotted quad, IPv6 compressed lowercase
    as RFC 5952 and Go's ``net.IP.String`` write it), no IPv6 zone, so that two different keys can
    never name the same subnet.
    """
    name = key.rsplit("/", 1)[-1]
    v4, amp, v6 = name.partition("&")
    m4 = _V4_KEY.fullmatch(v4)
    m6 = _V6_KEY.fullmatch(v6) if amp else None
    try:
        if m4 is None or (amp and m6 is None):
            raise ValueError
        subnet = IPv4Network(f"{m4.group(1)}/{int(m4.group(2))}", strict=True)
        if str(subnet.network_address) != m4.group(1):
            raise ValueError  # leading zeros: another spelling of the same subnet
        ipv6 = None
        if m6 is not None:
            if int(m6.group(2)) > _V6_MAX_PREFIX:
                raise ValueError
            ipv6 = IPv6Network(f"{m6.group(1)}/{int(m6.group(2))}", strict=True)
            if ipv6.network_address.compressed != m6.group(1):
                raise ValueError  # not compressed (fc00:0::): another spelling of the same subnet
    except (ValueError, AddressValueError, NetmaskValueError):
        raise LeaseDecodeError(f"malformed subnet key {name!r} (want a.b.c.d-len or "
                               "a.b.c.d-len&ipv6-len, canonical)") from None
    return subnet, ipv6


def key_name(key: str) -> str:
    """What follows the last ``/subnets/`` in an etcd key (for display)."""
    return key.rsplit("/subnets/", 1)[-1] or "(empty)"


def subnets_prefix(prefix: str) -> str:
    return prefix.rstrip("/") + "/subnets/"


def config_key(prefix: str) -> str:
    return prefix.rstrip("/") + "/config"
