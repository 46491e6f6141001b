"""flannelctl's answers to operator mistakes: every refusal exits non-zero, says why in words
an operator can act on, and leaves etcd exactly as it was.

1. ``subnets reserve`` over a live node's lease (it used to overwrite it and exit 0: the node
   lost its subnet, its pods the network), reservations the daemons would ignore, unknown
   backend types; ``--force`` says what it overwrote.
2. ``config set``: JSON syntax errors with line and column, unknown keys with a suggestion,
   ``--dry-run`` as a diff, the restart note.
3. Bad flag values are usage errors (exit 2) naming the flag; ``-o`` before or after the
   command; an unreachable plain-http endpoint is not reported as a TLS failure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from etcd_server import EtcdServer, etcdctl

from flanneld.ctl import build_parser
from flanneld.lease import Lease, LeaseAttrs
from flanneld.lease_policy import LeasePolicy

pytestmark = pytest.mark.etcd
CTL = str(Path(sys.executable).parent / "flannelctl")

VXLAN_CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":1}}'
NODE7 = ('{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"vxlan",'
         '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:07"}}')


def ctl(server: EtcdServer | None, prefix: str, *args: str, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    if server is not None:
        base.update(FLANNELD_ETCD_ENDPOINTS=server.endpoint, FLANNELD_ETCD_PREFIX=prefix)
    base.update(env or {})
    return subprocess.run([CTL, *args], env=base, input=stdin, capture_output=True, text=True,
                          timeout=60)


def dump(server: EtcdServer, prefix: str) -> list[tuple[str, str, int]]:
    """(key, value, etcd lease) of every key under ``prefix``: what a refusal must not change."""
    out = json.loads(etcdctl(server, "get", "--prefix", prefix, "-w", "json"))
    import base64

    return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode(),
             int(kv.get("lease", 0))) for kv in out.get("kvs", [])]


def live_lease(server: EtcdServer, key: str, value: str, ttl: int = 600) -> str:
    lease_id = etcdctl(server, "lease", "grant", str(ttl)).split()[1]
    etcdctl(server, "put", key, value, "--lease", lease_id)
    return lease_id


def value_of(server: EtcdServer, key: str) -> str:
    return etcdctl(server, "get", key, "--print-value-only").rstrip("\n")


# ---- item 1: subnets reserve ----------------------------------------------------------------------

def test_reserve_refuses_a_live_lease_of_another_node(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    live_lease(etcd_server, f"{etcd_prefix}/subnets/10.5.7.0-24", NODE7)
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.7.0/24", "--public-ip", "198.18.0.99")
    assert r.returncode == 1, r.stderr
    assert "198.18.0.7" in r.stderr and "live" in r.stderr and "--force" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert dump(etcd_server, etcd_prefix) == before


def test_reserve_refuses_another_nodes_reservation(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    etcdctl(etcd_server, "put", f"{etcd_prefix}/subnets/10.5.8.0-24",
            '{"PublicIP":"198.18.0.8","PublicIPv6":null,"BackendType":"vxlan"}')
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.8.0/24", "--public-ip", "198.18.0.99")
    assert r.returncode == 1 and "198.18.0.8" in r.stderr and "reserv" in r.stderr, r.stderr
    assert "--force" in r.stderr
    assert dump(etcd_server, etcd_prefix) == before


def test_reserve_force_overwrites_and_says_what_it_did(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    key = f"{etcd_prefix}/subnets/10.5.7.0-24"
    lease_id = live_lease(etcd_server, key, NODE7)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.7.0/24", "--public-ip", "198.18.0.99",
            "--force")
    assert r.returncode == 0, r.stderr
    assert "overwrote" in r.stderr and "198.18.0.7" in r.stderr and lease_id in r.stderr, r.stderr
    assert "revoked" in r.stderr
    assert json.loads(value_of(etcd_server, key))["PublicIP"] == "198.18.0.99"
    assert [lease for k, _, lease in dump(etcd_server, etcd_prefix) if k == key] == [0]
    ttl = etcdctl(etcd_server, "lease", "timetolive", lease_id)
    assert "expired" in ttl or "remaining(-1s)" in ttl, ttl  # the old holder's lease is gone


@pytest.mark.parametrize(("subnet", "public_ip", "words"), [
    ("198.18.0.0/24", "198.18.0.9", ["outside the Network 10.5.0.0/16"]),
    ("10.5.9.0/25", "198.18.0.9", ["/25", "SubnetLen is 24"]),
    ("10.5.9.0/24", "127.0.0.1", ["PublicIP 127.0.0.1 is a loopback address"]),
    ("10.5.9.0/24", "0.0.0.0", ["PublicIP 0.0.0.0 is the unspecified address"]),
    ("10.5.9.0/24", "10.5.3.4", ["PublicIP 10.5.3.4 lies inside the Network 10.5.0.0/16"]),
])
def test_reserve_refuses_what_the_daemons_would_reject(
    etcd_server: EtcdServer, etcd_prefix: str, subnet: str, public_ip: str, words: list[str]
) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", subnet, "--public-ip", public_ip)
    assert r.returncode == 1, r.stderr
    for word in words:
        assert word in r.stderr, r.stderr
    # The very text the daemons log and `flannelctl subnets` shows for such a lease.
    policy = LeasePolicy.build(IPv4Network("10.5.0.0/16"), 24)
    verdict = policy.check(Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(public_ip), "vxlan",
                                                                  '{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}'),
                                 None))
    assert verdict is not None and verdict[1] in r.stderr, (verdict, r.stderr)
    assert dump(etcd_server, etcd_prefix) == before
    # --force overrides a holder, never the rules.
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", subnet, "--public-ip", public_ip, "--force")
    assert r.returncode == 1 and dump(etcd_server, etcd_prefix) == before


def test_reserve_refuses_outside_subnet_min_max(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config",
            '{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0"}')
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.30.0/24", "--public-ip", "198.18.0.9")
    assert r.returncode == 1 and "SubnetMax" in r.stderr and "10.5.20.0" in r.stderr, r.stderr
    assert dump(etcd_server, etcd_prefix) == before


def test_reserve_refuses_a_subnet_another_key_holds(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """A key with an IPv6 half names the same IPv4 subnet: the daemons keep the first holder,
    so a second key for it would be ignored (``overlap``)."""
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    live_lease(etcd_server, f"{etcd_prefix}/subnets/10.5.11.0-24&fc00::-64",
               NODE7.replace("198.18.0.7", "198.18.0.11"))
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.11.0/24", "--public-ip", "198.18.0.99",
            "--force")
    assert r.returncode == 1 and "overlap" in r.stderr and "10.5.11.0-24&fc00::-64" in r.stderr, r.stderr
    assert "198.18.0.11" in r.stderr
    assert dump(etcd_server, etcd_prefix) == before


def test_reserve_refuses_unknown_backend_types_and_missing_config(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.9.0/24", "--public-ip", "198.18.0.9")
    assert r.returncode == 1 and "no network config" in r.stderr and "config set" in r.stderr, r.stderr
    assert dump(etcd_server, etcd_prefix) == []
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.9.0/24", "--public-ip", "198.18.0.9",
            "--backend-type", "ipip")
    assert r.returncode == 1 and "unknown backend type 'ipip'" in r.stderr, r.stderr
    assert "host-gw, udp, vxlan" in r.stderr
    assert dump(etcd_server, etcd_prefix) == before


@pytest.mark.parametrize(("config", "flag", "expected"), [
    (VXLAN_CONFIG, None, '{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan"}'),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}', None,
     '{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"host-gw"}'),
    # Go's udp leases carry no BackendType (and a config without Backend means udp).
    ('{"Network":"10.5.0.0/16"}', None, '{"PublicIP":"198.18.0.9","PublicIPv6":null}'),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"UDP"}}', None, '{"PublicIP":"198.18.0.9","PublicIPv6":null}'),
    ('{"Network":"10.5.0.0/16"}', "host-gw", '{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"host-gw"}'),
    (VXLAN_CONFIG, "udp", '{"PublicIP":"198.18.0.9","PublicIPv6":null}'),
])
def test_reserve_backend_type_defaults_to_the_config(
    etcd_server: EtcdServer, etcd_prefix: str, config: str, flag: str | None, expected: str
) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", config)
    args = ["subnets", "reserve", "10.5.9.0/24", "--public-ip", "198.18.0.9"]
    r = ctl(etcd_server, etcd_prefix, *args, *(["--backend-type", flag] if flag else []))
    assert r.returncode == 0, r.stderr
    assert value_of(etcd_server, f"{etcd_prefix}/subnets/10.5.9.0-24") == expected
    if flag is not None:  # another type than the config's: said, not refused
        assert "warning" in r.stderr and "differs" in r.stderr, r.stderr


def test_reserve_again_for_the_same_node_is_idempotent(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    args = ("subnets", "reserve", "10.5.9.0/24", "--public-ip", "198.18.0.9")
    assert ctl(etcd_server, etcd_prefix, *args).returncode == 0
    before = dump(etcd_server, etcd_prefix)
    r = ctl(etcd_server, etcd_prefix, *args)
    assert r.returncode == 0 and "already reserved" in r.stderr, r.stderr
    assert dump(etcd_server, etcd_prefix) == before
    # A node that took its reservation wrote its own attributes: they are kept.
    key = f"{etcd_prefix}/subnets/10.5.7.0-24"
    etcdctl(etcd_server, "put", key, NODE7)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.7.0/24", "--public-ip", "198.18.0.7")
    assert r.returncode == 0 and value_of(etcd_server, key) == NODE7, r.stderr


def test_reserve_makes_a_nodes_own_live_lease_a_reservation(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """Same PublicIP as the live holder: its value (VtepMAC) is kept, only the TTL goes."""
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    key = f"{etcd_prefix}/subnets/10.5.7.0-24"
    live_lease(etcd_server, key, NODE7)
    r = ctl(etcd_server, etcd_prefix, "subnets", "reserve", "10.5.7.0/24", "--public-ip", "198.18.0.7")
    assert r.returncode == 0, r.stderr
    assert "restart" in r.stderr, r.stderr
    assert [(v, lease) for k, v, lease in dump(etcd_server, etcd_prefix) if k == key] == [(NODE7, 0)]


def test_every_option_of_every_command_has_help() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path}: {action.option_strings or action.dest}")

    walk(build_parser(), "flannelctl")
    assert not missing, missing
    r = subprocess.run([CTL, "--help"], capture_output=True, text=True)
    assert "table|json" in r.stdout and "json|yaml" in r.stdout, r.stdout
    r = subprocess.run([CTL, "subnets", "reserve", "--help"], capture_output=True, text=True)
    assert "--force" in r.stdout and "revoke" in r.stdout, r.stdout


# ---- item 2: config set ---------------------------------------------------------------------------

def test_config_set_reports_json_syntax_errors_with_line_and_column(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    bad = tmp_path / "net.json"
    text = '{\n  "Network": "10.5.0.0/16",\n  "Backend": {"Type": "vxlan",}\n}\n'
    bad.write_text(text)
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        line, column = exc.lineno, exc.colno
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(bad))
    assert r.returncode == 1, r.stderr
    assert f"JSON syntax error at line {line}, column {column}" in r.stderr, r.stderr
    assert "YAML" not in r.stderr
    assert dump(etcd_server, etcd_prefix) == []


def test_config_set_reports_yaml_syntax_errors_and_non_json_values(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    bad = tmp_path / "net.yaml"
    bad.write_text("Network: 10.5.0.0/16\nBackend:\n  Type: [vxlan\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(bad))
    assert r.returncode == 1 and "YAML syntax error at line" in r.stderr, r.stderr
    dated = tmp_path / "dated.yaml"
    dated.write_text("Network: 10.5.0.0/16\nSubnetMin: 2024-01-01\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(dated))
    assert r.returncode == 1 and "SubnetMin" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert dump(etcd_server, etcd_prefix) == []


def test_config_set_names_unknown_keys_with_a_suggestion(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("Netwrok: 10.5.0.0/16\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(typo))
    assert r.returncode == 1, r.stderr
    assert "Network: is required" in r.stderr, r.stderr
    assert "unknown key 'Netwrok' (did you mean 'Network'?)" in r.stderr, r.stderr
    assert dump(etcd_server, etcd_prefix) == []
    # A valid config with a typo'd optional key is stored, with a warning.
    soft = tmp_path / "soft.json"
    soft.write_text('{"Network":"10.5.0.0/16","SubnetLne":26,"Backend":{"Type":"vxlan"}}')
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(soft))
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "unknown key 'SubnetLne' (did you mean 'SubnetLen'?)" in r.stderr


def test_config_set_dry_run_shows_a_diff_and_stores_nothing(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    before = dump(etcd_server, etcd_prefix)
    new = tmp_path / "new.yaml"
    new.write_text("Network: 10.6.0.0/16\nBackend:\n  Type: vxlan\n  VNI: 1\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", "--dry-run", str(new))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ ") and lines[2].startswith("@@")
    assert '-  "Network": "10.5.0.0/16"' in lines and '+  "Network": "10.6.0.0/16"' in lines, r.stdout
    # Pretty-printed with sorted keys: Backend (and its options) before Network.
    assert '     "Type": "vxlan",' in lines
    assert lines.index("   },") < lines.index('+  "Network": "10.6.0.0/16"'), r.stdout
    assert "nothing stored" in r.stderr, r.stderr
    assert dump(etcd_server, etcd_prefix) == before
    # Invalid input fails a dry run the same way.
    bad = tmp_path / "bad.yaml"
    bad.write_text("Network: 10.6.0.0/16\nSubnetLen: 31\n")
    r = ctl(etcd_server, etcd_prefix, "config", "set", "--dry-run", str(bad))
    assert r.returncode == 1 and "SubnetLen" in r.stderr and r.stdout == ""
    assert dump(etcd_server, etcd_prefix) == before


def test_config_set_says_daemons_must_be_restarted(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    good = tmp_path / "good.json"
    good.write_text(VXLAN_CONFIG)
    r = ctl(etcd_server, etcd_prefix, "config", "set", str(good))
    assert r.returncode == 0, r.stderr
    assert "only at start" in r.stderr and "restart" in r.stderr, r.stderr
    assert json.loads(value_of(etcd_server, f"{etcd_prefix}/config")) == json.loads(VXLAN_CONFIG)


# ---- item 3: flags, output formats, unreachable etcd ---------------------------------------------

@pytest.mark.parametrize(("args", "env", "words"), [
    (["--etcd-timeout", "abc", "subnets"], {}, ["--etcd-timeout", "abc"]),
    (["--etcd-timeout", "0", "subnets"], {}, ["--etcd-timeout"]),
    (["--etcd-timeout", "nan", "subnets"], {}, ["--etcd-timeout"]),
    (["subnets"], {"FLANNELD_ETCD_TIMEOUT": "abc"}, ["FLANNELD_ETCD_TIMEOUT", "abc"]),
    (["--etcd-endpoints", "ftp://127.0.0.1:2379", "subnets"], {}, ["--etcd-endpoints", "scheme"]),
    (["subnets"], {"FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:x"}, ["FLANNELD_ETCD_ENDPOINTS", "port"]),
    (["--etcd-certfile", "/nonexistent.pem", "subnets"], {}, ["--etcd-cafile", "--etcd-keyfile"]),
    (["--etcd-username", "root", "subnets"], {}, ["--etcd-password"]),
    (["-o", "yaml", "subnets"], {}, ["-o", "table", "json"]),
    (["config", "get", "-o", "table"], {}, ["-o", "json", "yaml"]),
    (["-o", "json", "subnets", "release", "10.5.9.0/24"], {}, ["-o"]),
])
def test_bad_flag_values_are_usage_errors(args: list[str], env: dict[str, str], words: list[str]) -> None:
    r = ctl(None, "", *args, env=env)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in r.stderr, (args, r.stderr)


def test_output_flag_before_or_after_the_command(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", VXLAN_CONFIG)
    etcdctl(etcd_server, "put", f"{etcd_prefix}/subnets/10.5.7.0-24", NODE7)
    before = ctl(etcd_server, etcd_prefix, "-o", "json", "subnets")
    after = ctl(etcd_server, etcd_prefix, "subnets", "-o", "json")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(before.stdout)[0]["public_ip"] == "198.18.0.7"
    yaml_before = ctl(etcd_server, etcd_prefix, "-o", "yaml", "config", "get")
    yaml_after = ctl(etcd_server, etcd_prefix, "config", "get", "-o", "yaml")
    assert yaml_before.returncode == 0 and yaml_before.stdout == yaml_after.stdout
    assert "Network: 10.5.0.0/16" in yaml_before.stdout
    assert ctl(etcd_server, etcd_prefix, "--output", "table", "subnets").stdout.startswith("SUBNET")


def test_unreachable_plain_http_etcd_is_not_a_tls_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # closed once the block ends: nothing listens there
    for args in (["subnets"], ["config", "get"],
                 ["subnets", "reserve", "10.5.9.0/24", "--public-ip", "198.18.0.9"]):
        r = ctl(None, "", "--etcd-endpoints", f"http://127.0.0.1:{port}", "--etcd-timeout", "1", *args)
        assert r.returncode == 1, r.stderr
        assert f"127.0.0.1:{port}" in r.stderr and "refused" in r.stderr, r.stderr
        assert "TLS" not in r.stderr and "certificate" not in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""


# ---- item 4: docs/config.md quotes the real messages ----------------------------------------------

DOC_CASES = [
    ({}, "Network: is required (an IPv4 CIDR such as 10.244.0.0/16), got None"),
    ({"Network": "10.0.0.0/255.0.0.0"}, "Network: not an IPv4 CIDR: '10.0.0.0/255.0.0.0'"),
    ({"Network": "10.0.0.0/29"}, "Network: 10.0.0.0/29 is too small; the minimum useful network prefix is /28"),
    ({"Network": "10.5.0.0/16", "SubnetLen": 31}, "SubnetLen: must be /30 or shorter, got 31"),
    ({"Network": "10.5.0.0/16", "SubnetLen": 17},
     "SubnetLen: /17 leaves fewer than four subnets in 10.5.0.0/16; use at least /18"),
    ({"Network": "10.5.0.0/16", "SubnetLen": "24"}, "SubnetLen: must be an integer, got '24'"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}, "SubnetMin: 10.6.0.0 is not inside Network 10.5.0.0/16"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.0.5"}, "SubnetMin: 10.5.0.5 is not on a /24 boundary"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.3.0"},
     "SubnetMin: 10.5.9.0 is above SubnetMax 10.5.3.0"),
    ({"Network": "10.5.0.0/16", "EnableIPv4": False}, "EnableIPv4: at least one of EnableIPv4/EnableIPv6 must be true"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48", "Backend": {"Type": "udp"}},
     "EnableIPv6: the udp backend carries IPv4 only (as Go flannel's); use vxlan or host-gw for a "
     "dual-stack network"),
    ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48"},
     "EnableIPv6: IPv6-only networks are not supported yet"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True}, "IPv6Network: is required when EnableIPv6 is true, got None"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/125"},
     "IPv6Network: fc00::/125 is too small; the minimum useful network prefix is /124"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 127},
     "IPv6SubnetLen: must be /126 or shorter, got 127"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 49},
     "IPv6SubnetLen: /49 leaves fewer than four subnets in fc00::/48; use at least /50"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc01::"},
     "IPv6SubnetMin: fc01:: is not inside IPv6Network fc00::/48"),
    ({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48",
      "IPv6SubnetMin": "fc00:0:0:9::", "IPv6SubnetMax": "fc00:0:0:2::"},
     "IPv6SubnetMin: fc00:0:0:9:: is above IPv6SubnetMax fc00:0:0:2::"),
    ({"Network": "10.5.0.0/16", "EnableNFTables": 1}, "EnableNFTables: must be true or false, got 1"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": ""}}, "Backend.Type: must be a non-empty string, got ''"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "ipip"}},
     "unknown backend type 'ipip'; known types: host-gw, udp, vxlan"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}},
     "Backend.VNI: must be an integer 0..16777215, got 16777216"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}},
     "Backend.Port: must be an integer 0..65535, got 70000"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "MTU": 60}}, "Backend.MTU: must be at least 68, got 60"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": "yes"}},
     "Backend.DirectRouting: must be true or false, got 'yes'"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "Port": 0}}, "Backend.Port: must be an integer 1-65535, got 0"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "Offload": "no"}}, "Backend.Offload: must be true or false"),
]


def test_docs_config_quotes_the_real_error_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    from flanneld import backends
    from flanneld.backends import backend_class

    # only the built-in backends (other tests of this process register test doubles)
    monkeypatch.setattr(backends, "_REGISTRY", {k: v for k, v in backends._REGISTRY.items()
                                                 if k in ("vxlan", "host-gw", "udp")})
    from flanneld.errors import FlannelError, NetworkConfigError
    from flanneld.netconfig import UNSUPPORTED_FIELD, parse_network_config, unsupported_reason

    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    for obj, message in DOC_CASES:
        with pytest.raises(FlannelError) as info:  # what `flannelctl config set` checks
            netconf = parse_network_config(json.dumps(obj))
            reason = unsupported_reason(netconf)
            if reason is not None:
                raise NetworkConfigError(UNSUPPORTED_FIELD, reason)
            backend_class(netconf.backend.type).validate_options(netconf.backend.options)
        assert str(info.value).removeprefix("network config: ") == message, obj
        assert f"`{message}`" in doc, message
