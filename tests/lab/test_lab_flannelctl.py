"""flannelctl against a running 3-node vxlan lab: an operator mistake must not cut a node off.

``flannelctl subnets reserve <node 2's subnet> --public-ip 198.18.0.99`` used to overwrite node
2's live lease and exit 0 (in a 5-node lab 44 of 56 pod pairs lost each other).  Now it is
refused: exit 1, node 2's key untouched (value and etcd lease), every pod pair still reaches.
flannelctl runs in the lab's underlay namespace, the only one that reaches the lab's etcd.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from labkit import FLANNELD_TEST_ARGS, REPO, FaultLab, fault_lab, poll, require_flanneld
from netnslab import pingmatrix
from netnslab.proc import nsexec

pytestmark = pytest.mark.lab

CTL = str(REPO / ".venv" / "bin" / "flannelctl")
STRANGER = "198.18.0.99"  # no node has this address


@pytest.fixture(scope="module")
def lab() -> Iterator[FaultLab]:
    require_flanneld()
    with fault_lab("flabctl", nodes=3, backend="vxlan", pods_per_node=1,
                   flanneld_args=FLANNELD_TEST_ARGS) as h:
        yield h


def flannelctl(lab: FaultLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    cmd = nsexec(lab.names.underlay_ns, [CTL, "--etcd-endpoints", lab.names.etcd_endpoint, *args])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd="/")


def all_pairs_reach(lab: FaultLab) -> list[tuple[str, str]]:
    results = pingmatrix.ping_all(lab.state.pods(), timeout=1.0, tries=3)
    assert results, "no pod pairs"
    return [(r.src, r.dst) for r in results if not r.ok]


def test_reserve_over_a_live_lease_is_refused_and_the_node_keeps_its_subnet(lab: FaultLab) -> None:
    poll(lambda: not all_pairs_reach(lab), 30, 0.5, "every pod pair reaches before the test")
    key, value = lab.lease_of(2)
    lease_id = lab.etcd_lease_id(key)
    subnet = lab.subnet(2)
    log_offset = lab.log_size(2)

    r = flannelctl(lab, "subnets", "reserve", str(subnet), "--public-ip", STRANGER)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert lab.public_ip(2) in r.stderr and "live" in r.stderr and "--force" in r.stderr, r.stderr

    time.sleep(2.0)  # a delayed effect (a watch event, a drift pass) would show by now
    assert lab.lease_of(2) == (key, value), "node 2's lease value changed"
    assert lab.etcd_lease_id(key) == lease_id, "node 2's key lost its etcd lease"
    assert lab.subnet(2) == subnet, "node 2 renumbered"
    assert not [line for line in lab.log_since(2, log_offset) if "LEASE CONFLICT" in line]
    failed = all_pairs_reach(lab)
    assert not failed, f"pod pairs cut off: {failed}"

    # The operator's view of it: node 2's lease listed as ok, nothing reserved for the stranger.
    listing = flannelctl(lab, "subnets", "-o", "json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["subnet"]: row for row in json.loads(listing.stdout)}
    assert rows[str(subnet)]["public_ip"] == lab.public_ip(2)
    assert rows[str(subnet)]["rejected"] is None and rows[str(subnet)]["reserved"] is False
    assert all(row["public_ip"] != STRANGER for row in rows.values())
