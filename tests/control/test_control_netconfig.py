"""Network config parsing, defaults and validation (flannel's pkg/subnet/config.go rules)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flanneld.backends import backend_class, known_types
from flanneld.errors import NetworkConfigError, UnknownBackendError
from flanneld.netconfig import (
    NO_IPV4_NETWORK,
    UNSUPPORTED_FIELD,
    parse_network_config,
    unsupported_reason,
)

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
        ('{"EnableIPv4":false}', "EnableIPv4", "at least one"),
        ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Network":"fc00::/48"}',
         "Network", "not an IPv4 CIDR"),
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


# ---- IPv6 (Go's CheckNetworkConfig, EnableIPv6 half) ------------------------------------------

def dual(**fields: object) -> str:
    return json.dumps({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48",
                       **fields})


@pytest.mark.parametrize(
    ("network", "subnet_len", "first", "last"),
    [
        ("fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),
        ("fc00::/56", 64, "fc00:0:0:1::", "fc00:0:0:ff::"),
        ("fc00::/62", 64, "fc00:0:0:1::", "fc00:0:0:3::"),
        ("fc00::/63", 65, "fc00:0:0:0:8000::", "fc00:0:0:1:8000::"),
        ("fc00::/120", 122, "fc00::40", "fc00::c0"),
        ("fc00::/124", 126, "fc00::4", "fc00::c"),
        ("fc00:0:0:5::7/64", 66, "fc00:0:0:5:4000::", "fc00:0:0:5:c000::"),  # host bits dropped
    ],
)
def test_ipv6_defaults(network: str, subnet_len: int, first: str, last: str) -> None:
    """IPv6SubnetLen 64 for /62 or shorter, else prefix + 2; IPv6SubnetMin the second subnet,
    IPv6SubnetMax the last (GetIPv6SubnetMin/Max)."""
    cfg = parse_network_config(dual(IPv6Network=network))
    assert cfg.ipv6_network == IPv6Network(network, strict=False)
    assert (cfg.ipv6_subnet_len, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max) == (
        subnet_len, IPv6Address(first), IPv6Address(last))
    assert cfg.ipv6_subnet_count == (int(IPv6Address(last)) - int(IPv6Address(first))) // (
        1 << (128 - subnet_len)) + 1
    # the IPv4 half is parsed as before
    assert (cfg.network, cfg.subnet_len, cfg.enable_ipv4, cfg.enable_ipv6) == (
        IPv4Network("10.5.0.0/16"), 24, True, True)


def test_ipv6_explicit_len_min_max_and_contains() -> None:
    cfg = parse_network_config(dual(IPv6SubnetLen=80, IPv6SubnetMin="fc00:0:0:10::",
                                    IPv6SubnetMax="fc00:0:0:10:ff::"))
    assert (cfg.ipv6_subnet_len, cfg.ipv6_subnet_count) == (80, 256)
    assert cfg.contains_ipv6_subnet(IPv6Network("fc00:0:0:10:7::/80"))
    assert not cfg.contains_ipv6_subnet(IPv6Network("fc00:0:0:10:100::/80"))  # above max
    assert not cfg.contains_ipv6_subnet(IPv6Network("fc00:0:0:10::/64"))  # wrong length
    assert not cfg.contains_ipv6_subnet(None)
    assert cfg.ipv6_half_fits(IPv6Network("fc00:0:0:10::/80")) and not cfg.ipv6_half_fits(None)
    v4only = parse_network_config('{"Network":"10.5.0.0/16"}')
    assert v4only.ipv6_half_fits(None) and not v4only.ipv6_half_fits(IPv6Network("fc00::/64"))
    assert (v4only.ipv6_subnet_min, v4only.ipv6_subnet_max, v4only.ipv6_subnet_count) == (None, None, 0)


def test_ipv6_min_max_of_all_zeros_mean_the_default_as_in_go() -> None:
    """Go's ip.IsEmpty: "::" (like a missing field) asks for the default."""
    cfg = parse_network_config(dual(IPv6SubnetMin="::", IPv6SubnetMax=""))
    assert (cfg.ipv6_subnet_min, cfg.ipv6_subnet_max) == (
        IPv6Address("fc00:0:0:1::"), IPv6Address("fc00:0:0:ffff::"))


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"IPv6Network": "fc00::/125"}, "IPv6Network",
         "fc00::/125 is too small; the minimum useful network prefix is /124"),
        ({"IPv6Network": "fc00::/127"}, "IPv6Network", "too small"),
        ({"IPv6Network": "10.0.0.0/8"}, "IPv6Network", "not an IPv6 CIDR"),
        ({"IPv6Network": "fc00::%eth0/48"}, "IPv6Network", "not an IPv6 CIDR"),
        ({"IPv6Network": "fc00::/129"}, "IPv6Network", "not an IPv6 CIDR"),
        ({"IPv6Network": 48}, "IPv6Network", "required"),
        ({"IPv6SubnetLen": 127}, "IPv6SubnetLen", "must be /126 or shorter, got 127"),
        ({"IPv6SubnetLen": 49}, "IPv6SubnetLen",
         "/49 leaves fewer than four subnets in fc00::/48; use at least /50"),
        ({"IPv6SubnetLen": "64"}, "IPv6SubnetLen", "must be an integer"),
        ({"IPv6SubnetMin": "fd00::"}, "IPv6SubnetMin", "fd00:: is not inside IPv6Network fc00::/48"),
        ({"IPv6SubnetMax": "fc00:1::"}, "IPv6SubnetMax", "fc00:1:: is not inside IPv6Network fc00::/48"),
        ({"IPv6SubnetMin": "fc00:0:0:1::5"}, "IPv6SubnetMin", "fc00:0:0:1::5 is not on a /64 boundary"),
        ({"IPv6SubnetMax": "fc00:0:0:9:8000::"}, "IPv6SubnetMax", "is not on a /64 boundary"),
        ({"IPv6SubnetMin": "fc00:0:0:9::", "IPv6SubnetMax": "fc00:0:0:3::"}, "IPv6SubnetMin",
         "fc00:0:0:9:: is above IPv6SubnetMax fc00:0:0:3::"),
        ({"IPv6SubnetMin": "banana"}, "IPv6SubnetMin", "not an IPv6 address: 'banana'"),
        ({"IPv6SubnetMin": "10.5.1.0"}, "IPv6SubnetMin", "not an IPv6 address"),
        ({"IPv6SubnetMax": "fc00::%1"}, "IPv6SubnetMax", "not an IPv6 address"),
        ({"IPv6SubnetMax": 5}, "IPv6SubnetMax", "must be an IPv6 address string, got 5"),
    ],
)
def test_invalid_ipv6_fields_name_the_field(fields: dict[str, object], field: str, text: str) -> None:
    with pytest.raises(NetworkConfigError) as info:
        parse_network_config(dual(**fields))
    assert info.value.field == field
    assert f"network config: {field}: " in str(info.value)
    assert text in str(info.value)


def test_ipv6_fields_are_ignored_without_enable_ipv6() -> None:
    """As in Go: CheckNetworkConfig looks at the IPv6 fields only when EnableIPv6 is true."""
    cfg = parse_network_config('{"Network":"10.5.0.0/16","IPv6Network":"fc00::/125",'
                               '"IPv6SubnetMin":"banana"}')
    assert (cfg.enable_ipv6, cfg.ipv6_network, cfg.ipv6_subnet_min) == (False, None, None)


def test_ipv6_only_parses_and_leaves_the_ipv4_fields_unchecked_as_go_does() -> None:
    cfg = parse_network_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    assert (cfg.enable_ipv4, cfg.enable_ipv6) == (False, True)
    assert (cfg.network, cfg.subnet_len, cfg.subnet_min) == (NO_IPV4_NETWORK, 0, IPv4Address(0))
    assert (cfg.ipv6_subnet_len, cfg.ipv6_subnet_min) == (64, IPv6Address("fc00:0:0:1::"))
    # Go's CheckNetworkConfig skips the IPv4 rules then (a SubnetMin outside Network passes) ...
    kept = parse_network_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48",'
                                '"Network":"10.5.0.0/16","SubnetMin":"10.9.0.0","SubnetLen":31}')
    assert (kept.network, kept.subnet_min, kept.subnet_len) == (
        IPv4Network("10.5.0.0/16"), IPv4Address("10.9.0.0"), 31)
    # ... and the IPv6 rules still apply
    with pytest.raises(NetworkConfigError) as info:
        parse_network_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}')
    assert info.value.field == "IPv6Network"


def test_unsupported_reason_is_the_one_place_that_refuses() -> None:
    assert unsupported_reason(parse_network_config('{"Network":"10.5.0.0/16"}')) is None
    for btype in ("vxlan", "host-gw"):
        assert unsupported_reason(parse_network_config(dual(Backend={"Type": btype}))) is None
    # no Backend means udp (as Go), which carries IPv4 only
    assert unsupported_reason(parse_network_config(dual())) == (
        "the udp backend carries IPv4 only (as Go flannel's); use vxlan or host-gw for a dual-stack network")
    assert unsupported_reason(parse_network_config(
        '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}')) == (
        "IPv6-only networks are not supported yet")
    assert UNSUPPORTED_FIELD == "EnableIPv6"
