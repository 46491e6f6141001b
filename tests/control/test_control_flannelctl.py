"""flannelctl as an operator runs it: a subprocess against a real etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from etcd_server import EtcdServer, etcdctl

pytestmark = pytest.mark.etcd
CTL = str(Path(sys.executable).parent / "flannelctl")


def ctl(server: EtcdServer, prefix: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLANNELD_ETCD_ENDPOINTS=server.endpoint, FLANNELD_ETCD_PREFIX=prefix)
    return subprocess.run([CTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=30)


def test_config_set_validates_then_get(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("Network: 10.5.0.0/16\nSubnetLen: 31\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(bad))
    assert r.returncode == 1 and "SubnetLen" in r.stderr and r.stdout == ""
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}')
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(unknown))
    assert r.returncode == 1 and "known types: host-gw, udp, vxlan" in r.stderr  # fresh process
    assert etcdctl(etcd_server, "get", f"{etcd_prefix}/config") == ""  # nothing written

    good = tmp_path / "good.yaml"
    good.write_text("Network: 10.5.0.0/16\nBackend:\n  Type: vxlan\n  VNI: 1\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(good))
    assert r.returncode == 0, r.stderr
    r = ctl(etcd_server, etcd_prefix, "config", "get")
    assert json.loads(r.stdout) == {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}


def test_subnets_list_reserve_release(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    # A reservation is checked against the network config (and takes its backend type).
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    key = f"{etcd_prefix}/subnets/10.5.7.0-24"
    lease_id = etcdctl(etcd_server, "lease", "grant", "600").split()[1]
    value = '{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:07"}}'
    etcdctl(etcd_server, "put", key, value, "--lease", lease_id)
    etcdctl(etcd_server, "put", f"{etcd_prefix}/subnets/10.5.8.0-24", "{garbage")
    assert ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.9.0/24", "--public-ip", "198.18.0.9").returncode == 0

    rows = json.loads(ctl(etcd_server, etcd_prefix, "subnets", "-o", "json").stdout)
    by_subnet = {r["subnet"]: r for r in rows}
    leased = by_subnet["10.5.7.0/24"]
    assert leased["public_ip"] == "198.18.0.7" and leased["backend_type"] == "vxlan"
    assert leased["backend_data"] == {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:07"}
    assert leased["vtep_mac"] == "aa:bb:cc:00:00:07"
    assert leased["reserved"] is False and 590 <= leased["ttl_seconds"] <= 600
    assert leased["expires_at"].endswith("Z")
    assert by_subnet["10.5.9.0/24"]["reserved"] is True and by_subnet["10.5.9.0/24"]["expires_at"] is None
    assert by_subnet["10.5.9.0/24"]["backend_type"] == "vxlan"
    assert "not JSON" in by_subnet["10.5.8.0/24"]["error"]

    table = ctl(etcd_server, etcd_prefix, "subnets").stdout.splitlines()
    assert table[0].split()[:2] == ["SUBNET", "PUBLIC"]
    assert any("10.5.9.0/24" in line and "reserved" in line for line in table)
    assert any("10.5.8.0/24" in line and "INVALID" in line for line in table)

    assert ctl(etcd_server, etcd_prefix, "subnets", "release", "10.5.9.0/24").returncode == 0
    again = ctl(etcd_server, etcd_prefix, "subnets", "release", "10.5.9.0/24")
    assert again.returncode == 1 and "no lease" in again.stderr


def test_usage_errors_exit_2(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    for args in (["subnets", "reserve", "10.5.9.1/24", "--public-ip", "198.18.0.9"],
                 ["subnets", "reserve", "10.5.9.0/24", "--public-ip", "x"],
                 ["frobnicate"], []):
        r = ctl(etcd_server, etcd_prefix, *args)
        assert r.returncode == 2, (args, r.stderr)
    assert ctl(etcd_server, etcd_prefix, "--version").stdout.startswith("flannelctl ")


def test_unreachable_etcd_is_a_clear_error(etcd_prefix: str) -> None:
    env = dict(os.environ, FLANNELD_ETCD_ENDPOINTS="http://127.0.0.1:9", FLANNELD_ETCD_TIMEOUT="1")
    r = subprocess.run([CTL, "subnets"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr and r.stdout == ""


def test_docker_opts_from_subnet_env(tmp_path: Path) -> None:
    env_file = tmp_path / "subnet.env"
    env_file.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    r = subprocess.run([CTL, "docker-opts", "--subnet-file", str(env_file)], capture_output=True, text=True)
    golden = (Path(__file__).parent / "golden" / "docker_opts.env").read_text()
    assert r.returncode == 0 and r.stdout == golden
    env_file.write_text("FLANNEL_NETWORK=10.1.0.0/16\n")
    r = subprocess.run([CTL, "docker-opts", "--subnet-file", str(env_file)], capture_output=True, text=True)
    assert r.returncode == 1 and "incomplete" in r.stderr


def test_subnets_shows_rejected_leases_with_why(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """What the daemons ignore is listed as rejected, with the reason they ignore it for."""
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    lease = '{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
    good = lease.format(ip="198.18.0.7", mac="aa:bb:cc:00:00:07")
    puts = {
        "10.5.7.0-24": good,
        "198.18.0.0-25": good,  # outside the Network: would blackhole the underlay
        "10.5.7.0-25": good,  # half of 10.5.7.0/24
        "10.5.8.0-24": lease.format(ip="0.0.0.0", mac="aa:bb:cc:00:00:08"),
        "10.5.9.0-24": lease.format(ip="198.18.0.9", mac="00:00:00:00:00:00"),
        "10.5.10.0-24": "{junk",
    }
    for name, value in puts.items():
        etcdctl(etcd_server, "put", f"{etcd_prefix}/subnets/{name}", value)
    r = ctl(etcd_server, etcd_prefix, "subnets", "-o", "json")
    assert r.returncode == 0, r.stderr
    by_key = {row["key"].rsplit("/", 1)[-1]: row for row in json.loads(r.stdout)}
    assert {k: row["rejected"] for k, row in by_key.items()} == {
        "10.5.7.0-24": None,
        "198.18.0.0-25": "outside_network",
        "10.5.7.0-25": "wrong_prefix_length",
        "10.5.8.0-24": "bad_public_ip",
        "10.5.9.0-24": "bad_backend_data",
        "10.5.10.0-24": "bad_value",
    }
    assert "outside the Network 10.5.0.0/16" in by_key["198.18.0.0-25"]["error"]
    assert "VtepMAC" in by_key["10.5.9.0-24"]["error"]
    table = ctl(etcd_server, etcd_prefix, "subnets").stdout.splitlines()
    assert table[0].split()[-1] == "STATUS"
    row = next(line for line in table if line.startswith("198.18.0.0/25"))
    assert "REJECTED outside_network" in row
    assert next(line for line in table if line.startswith("10.5.7.0/24 ")).endswith(" ok")


def test_config_set_refuses_dual_stack_on_udp_naming_enable_ipv6(
        etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path) -> None:
    dual = tmp_path / "dual.yaml"
    dual.write_text("Network: 10.5.0.0/16\nEnableIPv6: true\nIPv6Network: fc00::/48\n"
                    "Backend: {Type: udp}\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(dual))
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert "EnableIPv6: the udp backend carries IPv4 only" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("Network: 10.5.0.0/16\nEnableIPv6: true\nIPv6Network: fc00::/48\nIPv6SubnetMin: 'fd00::'\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(bad))
    assert r.returncode == 1 and "IPv6SubnetMin: fd00:: is not inside IPv6Network fc00::/48" in r.stderr
    assert etcdctl(etcd_server, "get", f"{etcd_prefix}/config") == ""  # nothing written


def test_subnets_json_shows_the_ipv6_half(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", '{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}')
    etcdctl(etcd_server, "put", f"{etcd_prefix}/subnets/10.5.7.0-24",
            '{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"host-gw"}')
    etcdctl(etcd_server, "put", f"{etcd_prefix}/subnets/10.5.8.0-24&fc00:0:0:8::-64",
            '{"PublicIP":"198.18.0.8","PublicIPv6":"2001:db8::8","BackendType":"host-gw"}')
    r = ctl(etcd_server, etcd_prefix, "subnets", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["subnet"]: row for row in json.loads(r.stdout)}
    assert {s: (row["ipv6_subnet"], row["public_ipv6"]) for s, row in rows.items()} == {
        "10.5.7.0/24": (None, None), "10.5.8.0/24": ("fc00:0:0:8::/64", "2001:db8::8")}
    table = ctl(etcd_server, etcd_prefix, "subnets").stdout.splitlines()
    assert table[0].split()[:3] == ["SUBNET", "IPV6", "SUBNET"]
    assert ctl(etcd_server, etcd_prefix, "subnets", "release", "10.5.8.0/24").returncode == 0
    assert etcdctl(etcd_server, "get", "--prefix", f"{etcd_prefix}/subnets/10.5.8.0") == ""
