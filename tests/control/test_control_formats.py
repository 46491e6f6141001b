"""Golden files for what other programs read: lease JSON, subnet.env, docker options."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path

import pytest

from flanneld.errors import LeaseDecodeError
from flanneld.lease import (
    LeaseAttrs,
    decode_lease_attrs,
    make_backend_data,
    parse_subnet_key,
    subnet_key,
)
from flanneld.subnet_env import (
    SubnetEnv,
    parse_subnet_env,
    previous_subnet,
    render_docker_opts,
    render_subnet_env,
    write_subnet_env,
)

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def test_vxlan_lease_json_is_byte_identical_to_go() -> None:
    attrs = LeaseAttrs(
        IPv4Address("192.168.64.3"),
        "vxlan",
        make_backend_data({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
    )
    assert attrs.to_json() == golden("lease_vxlan.json")


def test_hostgw_and_udp_lease_json() -> None:
    assert LeaseAttrs(IPv4Address("198.18.0.2"), "host-gw").to_json() == golden("lease_hostgw.json")
    # Go's udp backend writes no BackendType at all.
    assert LeaseAttrs(IPv4Address("198.18.0.3")).to_json() == golden("lease_udp.json")


@pytest.mark.parametrize("name", ["lease_vxlan.json", "lease_hostgw.json", "lease_udp.json"])
def test_lease_json_round_trips(name: str) -> None:
    text = golden(name)
    assert decode_lease_attrs(text).to_json() == text


def test_decode_is_case_insensitive_like_go() -> None:
    attrs = decode_lease_attrs(
        '{"publicip":"10.0.0.1","backendtype":"vxlan","backenddata":{"VtepMAC":"aa:bb:cc:dd:ee:ff","VNI":2}}'
    )
    assert attrs.public_ip == IPv4Address("10.0.0.1")
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_data_obj() == {"VtepMAC": "aa:bb:cc:dd:ee:ff", "VNI": 2}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\xff\xfe", "not JSON"),
        ("not json", "not JSON"),
        ("[1,2]", "JSON object"),
        ("{}", "PublicIP"),
        ('{"PublicIP":"300.1.1.1"}', "PublicIP"),
        ('{"PublicIP":42}', "PublicIP"),
        ('{"PublicIP":"10.0.0.1","PublicIPv6":"nope"}', "PublicIPv6"),
        ('{"PublicIP":"10.0.0.1","BackendType":7}', "BackendType"),
        ('{"PublicIP":"10.0.0.1","BackendData":"x"}', "BackendData"),
    ],
)
def test_malformed_lease_values_name_the_problem(raw: str | bytes, field: str) -> None:
    with pytest.raises(LeaseDecodeError, match=field):
        decode_lease_attrs(raw)


def test_subnet_keys() -> None:
    assert subnet_key(IPv4Network("10.5.52.0/24")) == "10.5.52.0-24"
    assert (
        subnet_key(IPv4Network("10.5.52.0/24"), IPv6Network("fc00:0:0:5::/64"))
        == "10.5.52.0-24&fc00:0:0:5::-64"
    )
    assert parse_subnet_key("/coreos.com/network/subnets/10.5.52.0-24") == (
        IPv4Network("10.5.52.0/24"),
        None,
    )
    assert parse_subnet_key("10.5.52.0-24&fc00:0:0:5::-64")[1] == IPv6Network("fc00:0:0:5::/64")
    for bad in ("10.5.52.0", "10.5.52.1-24", "x-24", "10.5.52.0-", "10.5.52.0-99"):
        with pytest.raises(LeaseDecodeError, match="malformed subnet key"):
            parse_subnet_key(bad)


def example_env(ipmasq: bool = False) -> SubnetEnv:
    return SubnetEnv(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.72.0/24"), 1450, ipmasq)


def test_subnet_env_golden() -> None:
    assert render_subnet_env(example_env()) == golden("subnet.env")


def test_docker_opts_golden() -> None:
    env = SubnetEnv(IPv4Network("10.1.0.0/16"), IPv4Network("10.1.74.0/24"), 1472, False)
    assert render_docker_opts(env) == golden("docker_opts.env")


def test_docker_masquerades_only_when_flannel_does_not() -> None:
    env = SubnetEnv(IPv4Network("10.1.0.0/16"), IPv4Network("10.1.74.0/24"), 1472, True)
    assert 'DOCKER_OPT_IPMASQ="--ip-masq=false"' in render_docker_opts(env)


def test_subnet_env_written_atomically_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(str(path), example_env(ipmasq=True))
    assert path.stat().st_mode & 0o777 == 0o644
    values = parse_subnet_env(path.read_text())
    assert values["FLANNEL_IPMASQ"] == "true"
    assert previous_subnet(str(path)) == IPv4Network("10.5.72.0/24")
    assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]  # no temp files left


def test_previous_subnet_tolerates_missing_and_garbage(tmp_path: Path) -> None:
    assert previous_subnet(str(tmp_path / "absent")) is None
    junk = tmp_path / "junk.env"
    junk.write_text("FLANNEL_SUBNET=banana\n")
    assert previous_subnet(str(junk)) is None
