"""The `flannel` executable against the real Debian bridge / host-local, as a runtime calls it."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .harness import GOLDEN, Node

pytestmark = pytest.mark.netlink
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def _pod_addrs(node: Node, pod: str, ifname: str = "eth0") -> tuple[set[str], int]:
    links = node.in_pod(pod, "-4", "addr", "show", "dev", ifname)
    addrs = {f"{a['local']}/{a['prefixlen']}" for a in links[0]["addr_info"]}
    return addrs, links[0]["mtu"]


def _pod_routes(node: Node, pod: str) -> set[tuple[str, str | None]]:
    return {(r["dst"], r.get("gateway")) for r in node.in_pod(pod, "route", "show")}


def test_add_configures_pod_and_saves_reference_state(node: Node) -> None:
    pod = node.pod()
    res = node.call("ADD", node.netconf("0.3.1"), "c1", pod)
    assert res.rc == 0, res
    result = res.json
    assert result["cniVersion"] == "0.3.1"
    assert result["ips"] == [
        {"version": "4", "interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}
    ]
    assert result["interfaces"][2]["sandbox"] == f"/run/netns/{pod}"
    addrs, mtu = _pod_addrs(node, pod)
    assert addrs == {"10.244.1.2/24"}
    assert mtu == 1450
    routes = _pod_routes(node, pod)
    assert ("default", "10.244.1.1") in routes
    assert ("10.244.0.0/16", "10.244.1.1") in routes
    # The saved state is the reference plugin's delegate config, byte for byte.
    saved = (node.data_dir / "c1").read_bytes()
    golden = (GOLDEN / "state-add-0.3.1.json").read_bytes()
    assert saved == golden.replace(b"@IPAM_DIR@", str(node.ipam_dir).encode())
    assert stat.S_IMODE((node.data_dir / "c1").stat().st_mode) == 0o600
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    assert sorted(os.listdir(node.data_dir)) == ["c1"]  # no temporary file left


def test_check_passes_then_fails_when_route_deleted(node: Node) -> None:
    pod = node.pod()
    conf = node.netconf("0.4.0")
    add = node.call("ADD", conf, "c1", pod)
    assert add.rc == 0, add
    conf["prevResult"] = add.json
    ok = node.call("CHECK", conf, "c1", pod)
    assert ok.rc == 0 and ok.stdout == b"", ok
    subprocess.run(["ip", "-n", pod, "route", "del", "10.244.0.0/16"], check=True)
    bad = node.call("CHECK", conf, "c1", pod)
    assert bad.rc != 0, bad
    assert bad.json["code"] == 102
    assert "10.244.0.0/16" in bad.json["details"]


def test_check_detects_missing_address_and_interface(node: Node) -> None:
    pod = node.pod()
    conf = node.netconf("1.0.0")
    add = node.call("ADD", conf, "c1", pod)
    assert add.rc == 0, add
    conf["prevResult"] = add.json
    subprocess.run(["ip", "-n", pod, "addr", "flush", "dev", "eth0"], check=True)
    res = node.call("CHECK", conf, "c1", pod)
    assert res.json["code"] == 102 and "10.244.1.2/24" in res.json["details"], res
    subprocess.run(["ip", "-n", pod, "link", "del", "eth0"], check=True)
    res = node.call("CHECK", conf, "c1", pod)
    assert res.json["code"] == 102 and "eth0 not found" in res.json["details"], res


def test_del_releases_and_is_idempotent(node: Node) -> None:
    pod = node.pod()
    conf = node.netconf()
    assert node.call("ADD", conf, "c1", pod).rc == 0
    assert node.host_local_ips() == {"10.244.1.2"}
    # DEL without CNI_NETNS (the runtime may have lost the namespace already).
    res = node.call("DEL", conf, "c1")
    assert res.rc == 0 and res.stdout == b"", res
    assert not (node.data_dir / "c1").exists()
    assert node.host_local_ips() == set()
    again = node.call("DEL", conf, "c1", pod)
    assert again.rc == 0, again
    never = node.call("DEL", conf, "never-added")
    assert never.rc == 0, never


def test_del_keeps_state_when_delegate_del_fails(node: Node, tmp_path: Any) -> None:
    pod = node.pod()
    conf = node.netconf()
    assert node.call("ADD", conf, "c1", pod).rc == 0
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    failed = node.call("DEL", conf, "c1", pod, path=str(empty))
    assert failed.rc != 0 and failed.json["code"] == 101, failed
    assert "bridge" in failed.json["msg"]
    assert (node.data_dir / "c1").exists()
    assert node.host_local_ips() == {"10.244.1.2"}
    retry = node.call("DEL", conf, "c1", pod)
    assert retry.rc == 0, retry
    assert not (node.data_dir / "c1").exists()
    assert node.host_local_ips() == set()


def test_failed_delegate_add_is_deleted(node: Node) -> None:
    pod = node.pod()
    conf = node.netconf()
    assert node.call("ADD", conf, "c1", pod).rc == 0
    # Same interface name in the same pod: bridge fails after host-local allocated an address.
    res = node.call("ADD", conf, "c2", pod)
    assert res.rc != 0, res
    assert "already exists" in res.json["msg"]
    assert not (node.data_dir / "c2").exists()
    assert node.host_local_ips() == {"10.244.1.2"}  # c2's address was given back


DUAL_STACK_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\n"
    "FLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_IPV6_NETWORK=fd10:244::/56\n"
    "FLANNEL_IPV6_SUBNET=fd10:244:0:1::1/64\n"
    "FLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=true\n"
)
IPV6_ONLY_ENV = (
    "FLANNEL_IPV6_NETWORK=fd10:244::/56\n"
    "FLANNEL_IPV6_SUBNET=fd10:244:0:1::1/64\n"
    "FLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=true\n"
)


def _global_addrs(node: Node, pod: str, ifname: str = "eth0") -> set[str]:
    """Global-scope addresses (both families) on `ifname` in the pod; empty if it is gone."""
    return {
        f"{a['local']}/{a['prefixlen']}"
        for link in node.in_pod(pod, "addr", "show") if link["ifname"] == ifname
        for a in link["addr_info"] if a.get("scope") == "global"
    }


def _routes(node: Node, pod: str, family: int) -> set[tuple[str, str | None]]:
    return {(r["dst"], r.get("gateway")) for r in node.in_pod(pod, f"-{family}", "route", "show")}


@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_dual_stack_add_check_del(node: Node, version: str) -> None:
    """FLANNEL_IPV6_SUBNET in subnet.env: the pod gets an address from each subnet via bridge +
    host-local, both networks are routed via the bridge's gateways, the saved state is the
    reference's delegate config (both range sets, IPv4 first; both routes), CHECK covers the
    IPv6 side, DEL gives both addresses back and is idempotent. 0.4.0 carries ips[].version;
    1.1.0 is delegated as 1.0.0 (Debian's bridge) and converted up."""
    node.subnet_file.write_text(DUAL_STACK_ENV)
    pod = node.pod()
    conf = node.netconf(version)
    add = node.call("ADD", conf, "ds1", pod)
    assert add.rc == 0, add
    result = add.json
    assert result["cniVersion"] == version
    legacy = version == "0.4.0"

    def tag(v: str) -> dict[str, str]:
        return {"version": v} if legacy else {}

    assert result["ips"] == [
        {**tag("4"), "interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"},
        {**tag("6"), "interface": 2, "address": "fd10:244:0:1::2/64",
         "gateway": "fd10:244:0:1::1"},
    ]
    assert {"dst": "10.244.0.0/16"} in result["routes"]
    assert {"dst": "fd10:244::/56"} in result["routes"]
    # The pod: one address in FLANNEL_SUBNET, one in FLANNEL_IPV6_SUBNET, both networks routed.
    addrs = _global_addrs(node, pod)
    assert addrs == {"10.244.1.2/24", "fd10:244:0:1::2/64"}
    subnets = {ipaddress.ip_network("10.244.1.0/24"), ipaddress.ip_network("fd10:244:0:1::/64")}
    assert {ipaddress.ip_interface(a).network for a in addrs} == subnets
    assert ("10.244.0.0/16", "10.244.1.1") in _routes(node, pod, 4)
    assert ("fd10:244::/56", "fd10:244:0:1::1") in _routes(node, pod, 6)
    # The saved state is the reference plugin's delegate config, byte for byte.
    golden = (GOLDEN / "state-add-dualstack.json").read_bytes()
    golden = golden.replace(b"@IPAM_DIR@", str(node.ipam_dir).encode())
    assert (node.data_dir / "ds1").read_bytes() == golden.replace(
        b"@CNI_VERSION@", version.encode())
    assert node.host_local_ips() == {"10.244.1.2", "fd10:244:0:1::2"}
    conf["prevResult"] = result
    ok = node.call("CHECK", conf, "ds1", pod)
    assert ok.rc == 0 and ok.stdout == b"", ok
    subprocess.run(["ip", "-n", pod, "-6", "route", "del", "fd10:244::/56"], check=True)
    bad = node.call("CHECK", conf, "ds1", pod)
    assert bad.rc != 0 and bad.json["code"] == 102, bad
    assert "fd10:244::/56" in bad.json["details"]
    dele = node.call("DEL", conf, "ds1", pod)
    assert dele.rc == 0 and dele.stdout == b"", dele
    assert _global_addrs(node, pod) == set()
    assert not (node.data_dir / "ds1").exists()
    assert node.host_local_ips() == set()  # host-local released both
    again = node.call("DEL", conf, "ds1", pod)
    assert again.rc == 0 and again.stdout == b"", again
    assert node.host_local_ips() == set()


def test_ipv6_only_add_check_del(node: Node) -> None:
    """subnet.env with only the IPV6 variables (flannel.go missing() accepts either family):
    one range set, one route, an IPv6-only pod."""
    node.subnet_file.write_text(IPV6_ONLY_ENV)
    pod = node.pod()
    conf = node.netconf("1.0.0")
    add = node.call("ADD", conf, "v6", pod)
    assert add.rc == 0, add
    assert add.json["ips"] == [
        {"interface": 2, "address": "fd10:244:0:1::2/64", "gateway": "fd10:244:0:1::1"}
    ]
    assert _global_addrs(node, pod) == {"fd10:244:0:1::2/64"}
    assert ("fd10:244::/56", "fd10:244:0:1::1") in _routes(node, pod, 6)
    assert _routes(node, pod, 4) == set()
    saved = json.loads((node.data_dir / "v6").read_bytes())
    assert saved["ipam"]["ranges"] == [[{"subnet": "fd10:244:0:1::/64"}]]
    assert saved["ipam"]["routes"] == [{"dst": "fd10:244::/56"}]
    conf["prevResult"] = add.json
    ok = node.call("CHECK", conf, "v6", pod)
    assert ok.rc == 0, ok
    assert node.call("DEL", conf, "v6", pod).rc == 0
    assert node.host_local_ips() == set()
    assert _global_addrs(node, pod) == set()


@pytest.mark.parametrize("value", ["fd10:244:0:1::zz/64", "fd10:244:0:1::1/129", "fd10:244:0:1::1"])
def test_invalid_ipv6_subnet_is_a_clean_cni_error(node: Node, value: str) -> None:
    """The reference's cmdAdd returns `loadFlannelSubnetEnv failed: ` + net.ParseCIDR's error
    (flannel.go L176-180, L286-289), which libcni's skel (checkVersionAndCall) turns into
    code 999 with that msg (ours: 100, docs/cni.md). Same here, plus details naming the file and variable; nothing
    is saved or allocated, stdout is the error JSON, stderr one line, no traceback."""
    node.subnet_file.write_text(DUAL_STACK_ENV.replace("fd10:244:0:1::1/64", value))
    pod = node.pod()
    res = node.call("ADD", node.netconf("1.0.0"), "bad6", pod)
    assert res.rc == 1, res
    assert res.json == {
        "cniVersion": "1.0.0",
        "code": 100,
        "msg": f"loadFlannelSubnetEnv failed: invalid CIDR address: {value}",
        "details": f"{node.subnet_file}: FLANNEL_IPV6_SUBNET",
    }
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res
    assert not (node.data_dir / "bad6").exists()
    assert node.host_local_ips() == set()
    assert node.in_pod(pod, "link", "show", "dev", "lo")  # the pod is there, untouched
    assert _global_addrs(node, pod) == set()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_in_and_out(node: Node, version: str) -> None:
    pod = node.pod()
    conf = node.netconf(version)
    add = node.call("ADD", conf, f"v{version.replace('.', '')}", pod)
    assert add.rc == 0, add
    result = add.json
    assert result["cniVersion"] == version
    legacy = version.startswith("0.")
    assert all(("version" in ip) == legacy for ip in result["ips"])
    assert result["ips"][0]["address"] == "10.244.1.2/24"
    if version != "0.3.0" and version != "0.3.1":
        conf["prevResult"] = result
        check = node.call("CHECK", conf, f"v{version.replace('.', '')}", pod)
        assert check.rc == 0, check
    saved = json.loads((node.data_dir / f"v{version.replace('.', '')}").read_bytes())
    assert saved["cniVersion"] == version  # saved as asked, delegated as 1.0.0 when needed
    dele = node.call("DEL", conf, f"v{version.replace('.', '')}", pod)
    assert dele.rc == 0, dele
    assert node.host_local_ips() == set()


def test_version_command(node: Node) -> None:
    res = node.run(node.env("VERSION", ifname=None, path=None), b"")
    assert res.rc == 0
    assert res.json == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("missing-netns", 4),
        ("missing-many", 4),
        ("unknown-command", 4),
        ("bad-containerid", 4),
        ("undecodable", 6),
        ("not-an-object", 6),
        ("delegate-has-name", 7),
        ("bad-field-type", 7),
        ("no-name", 7),
        ("subnet-env-absent", 11),
        ("subnet-env-incomplete", 11),
        ("subnet-env-garbage", 100),
        ("old-version", 1),
        ("check-on-0.3.1", 1),
        ("check-unknown-container", 3),
        ("no-delegate-in-path", 101),
    ],
)
def test_error_codes(node: Node, case: str, code: int, tmp_path: Any) -> None:
    pod = node.pod()
    conf: Any = node.netconf("1.0.0")
    env = node.env("ADD", "c1", pod)
    if case == "missing-netns":
        del env["CNI_NETNS"]
    elif case == "missing-many":
        del env["CNI_NETNS"], env["CNI_IFNAME"]
    elif case == "unknown-command":
        env["CNI_COMMAND"] = "FROB"
    elif case == "bad-containerid":
        env["CNI_CONTAINERID"] = "../etc"
    elif case == "undecodable":
        conf = b"{not json"
    elif case == "not-an-object":
        conf = b"[1, 2]"
    elif case == "delegate-has-name":
        conf["delegate"]["name"] = "x"
    elif case == "bad-field-type":
        conf["subnetFile"] = 5
    elif case == "no-name":
        del conf["name"]
    elif case == "subnet-env-absent":
        node.subnet_file.unlink()
    elif case == "subnet-env-incomplete":
        node.subnet_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_IPMASQ=true\n")
    elif case == "subnet-env-garbage":
        node.subnet_file.write_text(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=nope\nFLANNEL_MTU=1450\n"
            "FLANNEL_IPMASQ=true\n"
        )
    elif case == "old-version":
        conf["cniVersion"] = "0.2.0"
    elif case == "check-on-0.3.1":
        conf["cniVersion"] = "0.3.1"
        env["CNI_COMMAND"] = "CHECK"
    elif case == "check-unknown-container":
        conf["prevResult"] = {"cniVersion": "1.0.0", "ips": []}
        env["CNI_COMMAND"] = "CHECK"
    elif case == "no-delegate-in-path":
        (tmp_path / "empty").mkdir()
        env["CNI_PATH"] = str(tmp_path / "empty")
    res = node.run(env, conf)
    assert res.rc != 0, res
    err = res.json
    assert err["code"] == code, res
    assert isinstance(err["msg"], str) and err["msg"]
    assert "cniVersion" in err
    assert res.stderr, "errors are logged on stderr"
    if case == "missing-netns":
        assert err["msg"] == "required env variables [CNI_NETNS] missing"
    if case == "missing-many":
        assert err["msg"] == "required env variables [CNI_NETNS,CNI_IFNAME] missing"
    if case in ("subnet-env-absent", "subnet-env-incomplete"):
        assert not (node.data_dir / "c1").exists()
    if case == "subnet-env-incomplete":
        assert "FLANNEL_SUBNET" in err["msg"] and "FLANNEL_MTU" in err["msg"]


def test_fifty_concurrent_adds_get_distinct_addresses(node: Node) -> None:
    pods = [node.pod() for _ in range(50)]
    conf = node.netconf()

    def add(i: int) -> Any:
        return node.call("ADD", conf, f"cc{i}", pods[i])

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(add, range(50)))
    assert all(r.rc == 0 for r in results), [r for r in results if r.rc][:2]
    addresses = {r.json["ips"][0]["address"] for r in results}
    assert len(addresses) == 50
    assert len(node.host_local_ips()) == 50
    assert len(os.listdir(node.data_dir)) == 50

    def delete(i: int) -> Any:
        return node.call("DEL", conf, f"cc{i}", pods[i])

    with ThreadPoolExecutor(max_workers=50) as pool:
        assert all(r.rc == 0 for r in pool.map(delete, range(50)))
    assert node.host_local_ips() == set()
    assert os.listdir(node.data_dir) == []


def test_gc_drops_state_of_containers_not_valid(node: Node) -> None:
    pod1, pod2 = node.pod(), node.pod()
    conf = node.netconf("1.1.0")
    assert node.call("ADD", conf, "keep", pod1).rc == 0
    assert node.call("ADD", conf, "stale", pod2).rc == 0
    assert node.host_local_ips() == {"10.244.1.2", "10.244.1.3"}
    gc_conf = dict(conf)
    gc_conf["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    res = node.run(node.env("GC", ifname=None), gc_conf)
    assert res.rc == 0, res
    assert sorted(os.listdir(node.data_dir)) == ["keep"]
    assert node.host_local_ips() == {"10.244.1.2"}
    old = node.run(node.env("GC", ifname=None), node.netconf("1.0.0"))
    assert old.rc != 0 and old.json["code"] == 1


def test_status(node: Node) -> None:
    conf = node.netconf("1.1.0")
    env = node.env("STATUS", ifname=None)
    ok = node.run(env, conf)
    assert ok.rc == 0 and ok.stdout == b"", ok
    node.subnet_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\n")
    assert node.run(env, conf).json["code"] == 50
    node.subnet_file.unlink()
    gone = node.run(env, conf)
    assert gone.rc != 0 and gone.json["code"] == 50
    assert node.run(env, node.netconf("1.0.0")).json["code"] == 1


def test_add_path_imports_only_what_it_uses(node: Node) -> None:
    pod = node.pod()
    env = node.env("ADD", "c1", pod)
    interpreter = Path(node.flannel).read_text().splitlines()[0][2:].split()[0]
    proc = subprocess.run(
        ["ip", "netns", "exec", node.netns, interpreter, "-IS", "-X", "importtime", node.flannel],
        input=json.dumps(node.netconf()).encode(), env=env, capture_output=True, check=True,
    )
    imported = {
        line.split("|")[-1].strip()
        for line in proc.stderr.decode().splitlines() if line.startswith("import time:")
    }
    assert "flanneld.cni.main" in imported
    for heavy in ("json", "re", "subprocess", "typing", "os", "pyroute2", "ipaddress", "enum"):
        assert heavy not in imported, heavy
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.244.1.2/24"
