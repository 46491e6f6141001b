"""Golden files for what other programs read: lease JSON, subnet.env, docker options."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
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
    previous_subnets,
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


@pytest.mark.parametrize(("key", "v4", "v6"), [
    ("10.244.1.0-24&fd00:244:0:1::-64", "10.244.1.0/24", "fd00:244:0:1::/64"),
    ("10.244.1.0-24&2001:db8:0:1::-64", "10.244.1.0/24", "2001:db8:0:1::/64"),
    ("10.244.1.0-24&fd00::-56", "10.244.1.0/24", "fd00::/56"),
    ("10.244.1.0-24&fd00:1:0:0:2::-80", "10.244.1.0/24", "fd00:1::2:0:0:0/80"),  # longest run
    ("10.244.1.0-24&fd00:0:1::1:0:0-96", "10.244.1.0/24", "fd00:0:1:0:0:1:0:0/96"),  # first of two
    ("10.244.1.0-24&fd00:244:0:1:1:1:1:0-127", "10.244.1.0/24", "fd00:244:0:1:1:1:1::/127"),  # one 0
    ("10.0.0.0-31&::-0", "10.0.0.0/31", "::/0"),
])
def test_dual_subnet_keys_golden(key: str, v4: str, v6: str) -> None:
    # the canonical IPv6 half: RFC 5952, as Go's net.IP.String and subnet_key write it
    assert parse_subnet_key(key) == (IPv4Network(v4), IPv6Network(v6))
    assert subnet_key(IPv4Network(v4), IPv6Network(v6)) == key


@pytest.mark.parametrize("key", [
    "10.244.1.0-24&FD00:244:0:1::-64",  # upper case: Go's pattern is [a-f\d:]
    "10.244.1.0-24&fd00:244:0:1:0:0:0:0-64",  # not compressed
    "10.244.1.0-24&fd00:244:0:1:0::-64",
    "10.244.1.0-24&fd00:1::2:0:0:0-80",  # not the longest run of zeros
    "10.244.1.0-24&fd00:0:1:0:0:1::-96",  # not the first of two equal runs
    "10.244.1.0-24&fd00:244:0:1:1:1:1::-127",  # :: for a single zero group
    "10.244.1.0-24&fd00:0244:0:1::-64",  # leading zeros in a group
    "10.244.1.0-24&fd00:244:0:1::-064",  # leading zero in the length
    "10.244.1.0-24&fd00::-128",  # Go reads the length as 7 bits: 0..127
    "10.244.1.0-24&fd00::1-64",  # host bits
    "10.244.1.0-24&::ffff:10.0.0.0-120",  # a dotted tail
    "10.244.1.0-24&fd00::%eth0-64",
    "10.244.1.0-24&-64", "10.244.1.0-24&fd00::", "10.244.1.0-24&", "10.244.1.0-24&fd00::-64&",
    "10.244.1.0-08",  # leading zero in the IPv4 length: 10.244.1.0-8 is the spelling
    "10.244.1.0-32",  # Go reads the IPv4 length as 5 bits: 0..31
])
def test_dual_subnet_keys_refused_unless_canonical(key: str) -> None:
    with pytest.raises(LeaseDecodeError, match="malformed subnet key"):
        parse_subnet_key(key)


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


# ---- dual stack and IPv6-only (Go's WriteSubnetFile order; IPv6 lines only with IPv6) --------

def dual_env(ipmasq: bool = False) -> SubnetEnv:
    return SubnetEnv(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.72.0/24"), 1450, ipmasq,
                     ipv6_network=IPv6Network("fc00::/48"), ipv6_subnet=IPv6Network("fc00:0:0:48::/64"))


def test_subnet_env_dual_stack_golden() -> None:
    assert render_subnet_env(dual_env()) == golden("subnet_dual_stack.env")


def test_subnet_env_ipv6_only_golden() -> None:
    """IPv6-only: no FLANNEL_NETWORK / FLANNEL_SUBNET lines at all, as Go writes it."""
    env = SubnetEnv(None, None, 1450, True, IPv6Network("fc00::/48"), IPv6Network("fc00:0:0:48::/64"))
    assert render_subnet_env(env) == golden("subnet_ipv6_only.env")


def test_ipv4_only_output_is_unchanged_by_the_ipv6_support() -> None:
    env = example_env()
    assert render_subnet_env(env) == golden("subnet.env")
    assert "IPV6" not in render_subnet_env(env) and "V6" not in render_docker_opts(env)


def test_subnet_env_halves_go_together() -> None:
    with pytest.raises(ValueError, match="ipv6_network and ipv6_subnet"):
        SubnetEnv(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.72.0/24"), 1450, False,
                  ipv6_network=IPv6Network("fc00::/48"))
    with pytest.raises(ValueError, match="network and subnet"):
        SubnetEnv(IPv4Network("10.5.0.0/16"), None, 1450, False)
    with pytest.raises(ValueError, match="IPv4 or an IPv6 subnet"):
        SubnetEnv(None, None, 1450, False)


def test_docker_opts_with_ipv6_golden() -> None:
    env = SubnetEnv(IPv4Network("10.1.0.0/16"), IPv4Network("10.1.74.0/24"), 1472, False,
                    IPv6Network("fc00::/48"), IPv6Network("fc00:0:0:4a::/64"))
    assert render_docker_opts(env) == golden("docker_opts_ipv6.env")


def test_docker_opts_ipv6_only_has_no_bip() -> None:
    env = SubnetEnv(None, None, 1450, True, IPv6Network("fc00::/48"), IPv6Network("fc00:0:0:48::/64"))
    assert render_docker_opts(env) == (
        'DOCKER_OPT_FIXED_CIDR_V6="--fixed-cidr-v6=fc00:0:0:48::/64"\n'
        'DOCKER_OPT_IPMASQ="--ip-masq=false"\n'
        'DOCKER_OPT_IPV6="--ipv6"\n'
        'DOCKER_OPT_MTU="--mtu=1450"\n'
        'DOCKER_OPTS=" --fixed-cidr-v6=fc00:0:0:48::/64 --ip-masq=false --ipv6 --mtu=1450"\n'
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs /bin/sh")
def test_docker_opts_ipv6_lines_sit_where_mk_docker_opts_puts_such_variables(tmp_path: Path) -> None:
    """Our mk-docker-opts.sh (Go's, byte for byte) copies DOCKER_OPT_* variables found in the
    subnet file, sorted by name: given the IPv6 options that way it writes what we write."""
    script = Path(__file__).resolve().parents[2] / "systemd" / "mk-docker-opts.sh"
    subnet_file, out = tmp_path / "subnet.env", tmp_path / "docker_opts.env"
    subnet_file.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\n"
        "FLANNEL_IPMASQ=false\nDOCKER_OPT_IPV6=--ipv6\n"
        "DOCKER_OPT_FIXED_CIDR_V6=--fixed-cidr-v6=fc00:0:0:4a::/64\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/")}
    r = subprocess.run(["sh", str(script), "-f", str(subnet_file), "-d", str(out)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == golden("docker_opts_ipv6.env")


def test_previous_subnets_reads_both_halves(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(str(path), dual_env())
    assert previous_subnets(str(path)) == (IPv4Network("10.5.72.0/24"), IPv6Network("fc00:0:0:48::/64"))
    assert previous_subnet(str(path)) == IPv4Network("10.5.72.0/24")  # the IPv4 reader is unchanged
    write_subnet_env(str(path), example_env())
    assert previous_subnets(str(path)) == (IPv4Network("10.5.72.0/24"), None)
    path.write_text(golden("subnet_ipv6_only.env"))
    assert previous_subnets(str(path)) == (None, IPv6Network("fc00:0:0:48::/64"))


@pytest.mark.parametrize("raw", ["banana", "fc00::1", "fc00::1%eth0/64", "fc00::/64,fd00::/64",
                                 "10.5.72.1/24"])
def test_previous_ipv6_subnet_tolerates_garbage_like_go(tmp_path: Path, raw: str) -> None:
    """Go's ReadIP6CIDRFromSubnetFile: not one IPv6 CIDR means no previous subnet."""
    path = tmp_path / "subnet.env"
    path.write_text(f"FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET={raw}\n")
    assert previous_subnets(str(path)) == (IPv4Network("10.5.72.0/24"), None)
    assert previous_subnets(str(tmp_path / "absent")) == (None, None)


def test_dual_stack_lease_json_and_key_are_gos() -> None:
    attrs = LeaseAttrs(IPv4Address("192.168.64.3"), "vxlan",
                       make_backend_data({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
                       public_ipv6=IPv6Address("2001:db8::3"),
                       backend_v6_data=make_backend_data({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:45"}))
    assert attrs.to_json() == (
        '{"PublicIP":"192.168.64.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}')
    assert decode_lease_attrs(attrs.to_json()) == attrs
    assert subnet_key(IPv4Network("10.244.1.0/24"), IPv6Network("fc00::/64")) == "10.244.1.0-24&fc00::-64"
