"""The lab's own plumbing, without flanneld: underlay, etcd reach, pods, CLI, teardown."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import REPO, LabHandle, lab_running, poll
from netnslab import lab as labmod
from netnslab import pods
from netnslab.etcd import CONFIG_KEY
from netnslab.proc import nsexec, run
from netnslab.state import state_dir
from netnslab.underlay import netns_list

pytestmark = pytest.mark.lab

LAB = REPO / "netns-lab" / "lab"


@pytest.fixture(scope="module")
def plumbing() -> Iterator[LabHandle]:
    with lab_running("flabtpl", nodes=3, flanneld=False, attach="bridge") as h:
        yield h


def test_underlay_reachable_between_all_nodes(plumbing: LabHandle) -> None:
    for src in (1, 2, 3):
        for dst in (1, 2, 3):
            if src != dst:
                assert plumbing.ping(plumbing.node_ns(src), f"198.18.0.{dst}"), (src, dst)


def test_default_route_via_underlay_gateway(plumbing: LabHandle) -> None:
    for node in (1, 2, 3):
        default = [r for r in plumbing.ipj(plumbing.node_ns(node), "-4", "route") if r["dst"] == "default"]
        assert default and default[0]["gateway"] == "198.18.0.254"
        assert default[0]["dev"] == plumbing.names.uplink


def test_etcd_reachable_from_every_node(plumbing: LabHandle) -> None:
    for node in (1, 2, 3):
        out = plumbing.etcdctl("get", CONFIG_KEY, "--print-value-only", from_node=node)
        assert json.loads(out)["Backend"]["Type"] == "vxlan"
        health = f"{plumbing.names.etcd_endpoint}/health"
        res = run(nsexec(plumbing.node_ns(node), ["curl", "-sf", "-m", "2", health]), check=False)
        assert res.returncode == 0 and '"true"' in res.stdout, node


def test_pods_on_one_node_reach_each_other(plumbing: LabHandle) -> None:
    for node in (1, 2, 3):
        a, b = plumbing.pod(node, 1), plumbing.pod(node, 2)
        assert plumbing.ping(a.name, b.address.split("/")[0])
        assert plumbing.ping(b.name, a.address.split("/")[0])
        assert plumbing.ping(a.name, str(plumbing.subnet(node).network_address + 1))  # cni0


def test_nothing_in_root_namespace(plumbing: LabHandle) -> None:
    links = run(["ip", "-o", "link", "show"]).stdout
    assert "flabtpl-" not in links


def test_cli_status_and_exec(plumbing: LabHandle) -> None:
    res = subprocess.run(
        [str(LAB), "--name", "flabtpl", "status"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "198.18.0.3" in res.stdout and plumbing.pod(2, 2).address in res.stdout
    res = subprocess.run(
        [str(LAB), "--name", "flabtpl", "exec", "n2p1", "--", "ip", "-4", "-o", "addr", "show", "eth0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0 and plumbing.pod(2, 1).address in res.stdout


def test_cli_usage_errors_exit_2() -> None:
    for args in (["bogus"], ["--name", "Bad_Name", "status"], ["up", "--backend", "nope"], []):
        res = subprocess.run([str(LAB), *args], capture_output=True, text=True, check=False)
        assert res.returncode == 2, (args, res.stderr)
    res = subprocess.run([str(LAB), "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "ping-all" in res.stdout


def test_ping_all_fails_without_overlay(plumbing: LabHandle) -> None:
    """No flanneld: pods on different nodes cannot reach each other, and ping-all says so."""
    res = subprocess.run(
        [str(LAB), "--name", "flabtpl", "ping-all", "--timeout", "0.3", "--tries", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 1
    assert "6/30 pod pairs reachable" in res.stdout


def test_cni_attach_keeps_state_in_node_dir() -> None:
    """Pods attached through our CNI plugin: addresses from the node subnet, host-local state
    and the plugin's saved delegate config under the node's state dir."""
    if not pods.cni_available():
        pytest.skip("CNI plugin .venv/bin/flannel not installed yet")
    with lab_running("flabtcni", nodes=2, flanneld=False, attach="cni") as h:
        st = h.state
        assert st.attach == "cni"
        for node in (1, 2):
            subnet = h.subnet(node)
            for j in (1, 2):
                pod = h.pod(node, j)
                assert pod.address and h.pod_ip(node, j) in [str(a) for a in subnet.hosts()]
                assert (st.node_dir(node) / "cni" / pod.name).exists()
            ipam_files = list((st.node_dir(node) / "ipam").rglob("*"))
            assert any(h.pod_ip(node, 1) in f.name for f in ipam_files), ipam_files
            assert h.ping(h.pod(node, 1).name, h.pod_ip(node, 2))
        assert not Path(f"/var/lib/cni/networks/cbr0/{h.pod_ip(1, 1)}").exists()


def test_down_after_crash_removes_everything() -> None:
    """State dir gone and a stray process left in a pod namespace: down still cleans up."""
    name = "flabtcr"
    labmod.down(name)
    try:
        labmod.up(name, labmod.UpOptions(nodes=2, pods_per_node=1, flanneld=False, attach="bridge"))
        stray = subprocess.Popen(nsexec(f"{name}-n1p1", ["sleep", "600"]))
        etcd_pid = int((state_dir(name) / "etcd.pid").read_text().split()[0])
        shutil.rmtree(state_dir(name))
        assert labmod.down(name) == 5  # ul, 2 nodes, 2 pods
        poll(lambda: stray.poll() is not None, 5, what="stray process killed")
        assert not any(ns.startswith(f"{name}-") for ns in netns_list())
        stat = Path(f"/proc/{etcd_pid}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1][0] in "ZX"
    finally:
        labmod.down(name)


def test_up_refuses_existing_lab_and_leaves_it_alone(plumbing: LabHandle) -> None:
    res = subprocess.run(
        [str(LAB), "--name", "flabtpl", "up", "--nodes", "1", "--no-flanneld"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "already exists" in res.stderr
    assert "flabtpl-n3p2" in netns_list()
    assert plumbing.ping(plumbing.pod(1, 1).name, plumbing.pod_ip(1, 2))
