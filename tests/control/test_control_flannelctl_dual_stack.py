"""flannelctl and dual stack, in-process over the in-memory store: the IPv6 half of each key
in ``subnets`` (table and JSON), ``release`` of a dual-stack key, ``config set`` validating the
IPv6 fields and refusing what the daemon cannot run yet, ``docker-opts`` with IPv6."""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from flanneld import ctl
from flanneld.errors import FlannelError
from flanneld.lease import LeaseAttrs, config_key, subnets_prefix
from flanneld.memory_store import MemoryStore

pytestmark = pytest.mark.unit
PREFIX = "/coreos.com/network"
SUBNETS = subnets_prefix(PREFIX)
CTL = str(Path(sys.executable).parent / "flannelctl")
GOLDEN = Path(__file__).parent / "golden"
CONFIG = b'{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}'


async def store_with(keys: dict[str, LeaseAttrs]) -> MemoryStore:
    store = MemoryStore()
    await store.put(config_key(PREFIX), CONFIG)
    for name, attrs in keys.items():
        await store.put(SUBNETS + name, attrs.to_json().encode())
    return store


V4 = LeaseAttrs(IPv4Address("198.18.0.7"), "host-gw")
V6 = LeaseAttrs(IPv4Address("198.18.0.8"), "host-gw", public_ipv6=IPv6Address("2001:db8::8"))


async def test_subnets_json_has_the_ipv6_fields_null_when_absent() -> None:
    store = await store_with({"10.5.7.0-24": V4, "10.5.8.0-24&fc00:0:0:8::-64": V6})
    rows = {r["subnet"]: r for r in await ctl._subnet_rows(store, PREFIX)}
    assert (rows["10.5.7.0/24"]["ipv6_subnet"], rows["10.5.7.0/24"]["public_ipv6"]) == (None, None)
    assert (rows["10.5.8.0/24"]["ipv6_subnet"], rows["10.5.8.0/24"]["public_ipv6"]) == (
        "fc00:0:0:8::/64", "2001:db8::8")
    assert rows["10.5.8.0/24"]["rejected"] is None
    json.dumps(list(rows.values()))  # what -o json prints


async def test_subnets_json_of_an_undecodable_dual_key_keeps_its_ipv6_subnet() -> None:
    store = await store_with({})
    await store.put(SUBNETS + "10.5.9.0-24&fc00:0:0:9::-64", b"{junk")
    [row] = await ctl._subnet_rows(store, PREFIX)
    assert (row["ipv6_subnet"], row["public_ipv6"], row["public_ip"]) == ("fc00:0:0:9::/64", None, None)


async def test_table_shows_ipv6_columns_only_when_some_key_has_an_ipv6_half(
        capsys: pytest.CaptureFixture[str]) -> None:
    ctl._print_table(await ctl._subnet_rows(await store_with({"10.5.7.0-24": V4}), PREFIX))
    v4_table = capsys.readouterr().out.splitlines()
    assert v4_table[0].split() == ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "EXPIRES", "TTL",
                                   "STATUS"]

    store = await store_with({"10.5.7.0-24": V4, "10.5.8.0-24&fc00:0:0:8::-64": V6})
    ctl._print_table(await ctl._subnet_rows(store, PREFIX))
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["SUBNET", "IPV6", "SUBNET", "PUBLIC", "IP", "PUBLIC", "IPV6", "BACKEND",
                              "VTEP", "MAC", "EXPIRES", "TTL", "STATUS"]
    assert first.split()[:4] == ["10.5.7.0/24", "-", "198.18.0.7", "-"]
    assert second.split()[:4] == ["10.5.8.0/24", "fc00:0:0:8::/64", "198.18.0.8", "2001:db8::8"]
    assert second.split()[-1] == "ok"


async def test_release_finds_a_dual_stack_key_by_its_ipv4_subnet(capsys: pytest.CaptureFixture[str]) -> None:
    store = await store_with({"10.5.8.0-24&fc00:0:0:8::-64": V6, "10.5.80.0-24&fc00:0:0:80::-64": V4})
    assert await ctl.release(store, PREFIX, IPv4Network("10.5.8.0/24")) == 0
    assert "10.5.8.0-24&fc00:0:0:8::-64" in capsys.readouterr().err
    names = [kv.key.removeprefix(SUBNETS) for kv in (await store.list_prefix(SUBNETS)).kvs]
    assert names == ["10.5.80.0-24&fc00:0:0:80::-64"]
    assert await ctl.release(store, PREFIX, IPv4Network("10.5.8.0/24")) == 1
    assert "no lease or reservation for 10.5.8.0/24" in capsys.readouterr().err


def write(tmp_path: Path, obj: dict[str, object]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(obj))
    return str(path)


BASE = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "Backend": {"Type": "udp"}},
         "network config: EnableIPv6: the udp backend carries IPv4 only (as Go flannel's); use vxlan or host-gw for a dual-stack network"),
        ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48"},
         "network config: EnableIPv6: IPv6-only networks are not supported yet"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/125"}, "network config: IPv6Network: fc00::/125 is too small"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fd00::"},
         "network config: IPv6SubnetMin: fd00:: is not inside IPv6Network fc00::/48"),
        ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMax": "fc00:0:0:1::1"},
         "network config: IPv6SubnetMax: fc00:0:0:1::1 is not on a /64 boundary"),
    ],
)
def test_config_set_checks_ipv6_and_refuses_what_the_daemon_cannot_run(
        tmp_path: Path, extra: dict[str, object], message: str) -> None:
    with pytest.raises(FlannelError) as info:
        ctl.load_config_file(write(tmp_path, {**BASE, **extra}))
    assert str(info.value).startswith(message), str(info.value)


def test_config_set_still_takes_an_ipv4_config_with_ignored_ipv6_fields(tmp_path: Path) -> None:
    raw, obj = ctl.load_config_file(write(tmp_path, {**BASE, "IPv6Network": "fc00::/48"}))
    assert json.loads(raw) == obj == {**BASE, "IPv6Network": "fc00::/48"}


def test_docker_opts_from_a_dual_stack_subnet_env(tmp_path: Path) -> None:
    env_file = tmp_path / "subnet.env"
    env_file.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
                        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:4a::1/64\n"
                        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    r = subprocess.run([CTL, "docker-opts", "--subnet-file", str(env_file)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (GOLDEN / "docker_opts_ipv6.env").read_text()
    env_file.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
                        "FLANNEL_IPV6_SUBNET=fc00:0:0:4a::1/64\nFLANNEL_MTU=1472\n")
    r = subprocess.run([CTL, "docker-opts", "--subnet-file", str(env_file)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "FLANNEL_IPV6_NETWORK" in r.stderr


async def test_an_ipv6_only_config_checks_no_lease_and_reserves_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its IPv4 fields are Go's zero values (0.0.0.0/0, SubnetLen 0): no policy to judge by."""
    store = await store_with({"10.5.7.0-24": V4})
    await store.put(config_key(PREFIX), b'{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    [row] = await ctl._subnet_rows(store, PREFIX)
    assert row["rejected"] is None and "IPv6-only" in capsys.readouterr().err
    with pytest.raises(ctl.Refused, match="IPv6-only"):
        await ctl.reserve(store, PREFIX, "", IPv4Network("10.5.9.0/24"), IPv4Address("198.18.0.9"))
    assert await store.get(SUBNETS + "10.5.9.0-24") is None
