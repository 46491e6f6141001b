"""Network config parsing, defaults and validation (flannel's pkg/subnet/config.go rules)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from flanneld.backends import backend_class, known_types
from flanneld.errors import NetworkConfigError, UnknownBackendError
from flanneld.netconfig import parse_network_config

pytestmark = pytest.mark.unit


def test_defaults_for_a_slash16() -> None:
    cfg = parse_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    assert cfg.network == IPv4Network("10.244.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.244.1.0")
    assert cfg.subnet_max == IPv4Address("10.244.255.0")
    assert cfg.subnet_count == 255
    assert cfg.backend.type == "vxlan"


@pytest.mark.parametrize(("network", "subnet_len"), [("10.0.0.0/22", 24), ("10.0.0.0/23", 25),
                                                      ("10.0.0.0/26", 28), ("10.0.0.0/28", 30)])
def test_default_subnet_len(network: str, subnet_len: int) -> None:
    assert parse_network_config(f'{{"Network":"{network}"}}').subnet_len == subnet_len


def test_field_names_are_case_insensitive_and_backend_type_lowercased() -> None:
    cfg = parse_network_config('{"network":"10.5.0.0/16","subnetlen":26,"backend":{"type":"VXLAN","VNI":4}}')
    assert cfg.subnet_len == 26
    assert cfg.backend.type == "vxlan"
    assert cfg.backend.options == {"VNI": 4}


def test_missing_backend_falls_back_to_udp_like_go_flanneld() -> None:
    assert parse_network_config('{"Network":"10.5.0.0/16"}').backend.type == "udp"


def test_explicit_min_max() -> None:
    cfg = parse_network_config(
        '{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.19.0"}'
    )
    assert cfg.subnet_count == 10
    assert cfg.contains_subnet(IPv4Network("10.5.10.0/24"))
    assert not cfg.contains_subnet(IPv4Network("10.5.20.0/24"))
    assert not cfg.contains_subnet(IPv4Network("10.5.10.0/25"))


def test_unknown_fields_are_reported_not_fatal() -> None:
    cfg = parse_network_config('{"Network":"10.5.0.0/16","Netwrok":"typo"}')
    assert cfg.unknown_fields == ("Netwrok",)


@pytest.mark.parametrize(
    ("doc", "field", "text"),
    [
        ("{", "(document)", "not valid JSON"),
        ("[]", "(document)", "JSON object"),
        ("{}", "Network", "required"),
        ('{"Network":"10.5.0.0/33"}', "Network", "not an IPv4 CIDR"),
        ('{"Network":"10.5.0.0/29"}', "Network", "too small"),
        ('{"Network":"10.5.0.0/16","SubnetLen":31}', "SubnetLen", "/30 or shorter"),
        ('{"Network":"10.5.0.0/16","SubnetLen":17}', "SubnetLen", "fewer than four"),
        ('{"Network":"10.5.0.0/16","SubnetLen":"24"}', "SubnetLen", "integer"),
        ('{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}', "SubnetMin", "not inside"),
        ('{"Network":"10.5.0.0/16","SubnetMax":"10.5.1.7"}', "SubnetMax", "boundary"),
        ('{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0"}', "SubnetMin", "above"),
        ('{"Network":"10.5.0.0/16","Backend":"vxlan"}', "Backend", "JSON object"),
        ('{"Network":"10.5.0.0/16","Backend":{"Type":""}}', "Backend.Type", "non-empty"),
        ('{"Network":"10.5.0.0/16","EnableIPv4":"yes"}', "EnableIPv4", "true or false"),
        ('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}', "EnableIPv6",
         "dual stack"),
        ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}', "EnableIPv6",
         "IPv6-only"),
        ('{"Network":"10.5.0.0/16","EnableIPv6":true}', "IPv6Network", "required"),
        ('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}',
         "IPv6SubnetLen", "/126"),
    ],
)
def test_invalid_configs_name_the_field(doc: str, field: str, text: str) -> None:
    with pytest.raises(NetworkConfigError, match=text) as info:
        parse_network_config(doc)
    assert info.value.field == field
    assert field in str(info.value)


def test_backend_registry() -> None:
    assert {"host-gw", "udp", "vxlan"} <= set(known_types())
    with pytest.raises(UnknownBackendError, match=r"known types: .*host-gw, .*udp, .*vxlan"):
        backend_class("ipip")
