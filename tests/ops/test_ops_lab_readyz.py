"""/readyz of a lab node over HTTP: 503 before the lease, 200 when ready, 503 while the own
lease is lost, 200 once it is re-acquired.

What test_ops_daemon_notify.py already covers is not repeated here: it checks READY=1 and
/readyz 200 after subnet.env, and that a deleted lease shows ``STATUS=lease lost`` then
``STATUS=ready``; there the re-acquire is immediate, so /readyz itself is never seen at 503.
Here the not-ready phases are held open on purpose, and /readyz is asked during them:

* before the lease: node 1's daemon restarts while etcd has no network config;
* lease conflict: a squatter value over node 1's key while node 1's etcd lease lives is
  overwritten at once (ready again);
* lease lost: node 1's etcd lease is revoked and a squatter lease (another PublicIP, its own
  etcd lease) takes the key while the network's range (SubnetMin..SubnetMax) holds exactly
  the two nodes, so re-acquiring fails (out of subnets) until the squatter goes away.
/healthz stays 200 throughout: not ready is not dead.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from ops_lab import HEALTHZ_PORT, LabHandle, http_get, lab_daemon, lab_running, poll, require_flanneld

pytestmark = pytest.mark.lab

LAB = "flabo1"
CONFIG_KEY = "/coreos.com/network/config"
# Room for exactly two /24 leases: a squatter leaves the evicted node nowhere to go.
CONFIG = json.dumps(
    {
        "Network": "10.244.0.0/16",
        "SubnetMin": "10.244.1.0",
        "SubnetMax": "10.244.2.0",
        "Backend": {"Type": "vxlan"},
    }
)
ARGS = ("--healthz-ip=127.0.0.1", f"--healthz-port={HEALTHZ_PORT}")


def get(lab: LabHandle, node: int, path: str) -> tuple[int, str]:
    return http_get(lab.node_ns(node), f"http://127.0.0.1:{HEALTHZ_PORT}{path}", timeout=3)


def retrying(lab: LabHandle, node: int, what: str) -> bool:
    """The node's current flanneld run logged a failed ``what`` it is retrying."""
    text = lab_daemon.log_file(lab.state, node).read_text(errors="replace")
    run = text.rsplit("--- lab: starting flanneld", 1)[-1]
    return any(what in line and "(retrying)" in line for line in run.splitlines())


def test_readyz_before_lease_and_while_lease_lost() -> None:
    require_flanneld()
    with lab_running(LAB, nodes=2, pods_per_node=0, config=CONFIG, flanneld_args=ARGS) as lab:
        assert get(lab, 1, "/readyz") == (200, "ready\n")

        # ---- before the lease: no network config in etcd
        lab.kill_flanneld(1)
        lab.etcdctl("del", CONFIG_KEY)
        lab_daemon.start(lab.state, 1)
        poll(lambda: get(lab, 1, "/healthz")[0] != 0, 20, interval=0.05, what="n1 listener up")
        # the daemon has asked etcd for the config and is retrying
        poll(lambda: retrying(lab, 1, "network config"), 20, interval=0.1, what="config retry logged")
        status, body = get(lab, 1, "/readyz")
        assert (status, body.split(":")[0]) == (503, "waiting for"), body
        assert "lease" in body and "subnet.env" in body, body
        assert get(lab, 1, "/healthz") == (200, "running")

        lab.etcdctl("put", CONFIG_KEY, CONFIG)
        t0 = time.monotonic()
        poll(lambda: get(lab, 1, "/readyz") == (200, "ready\n"), 30, interval=0.05, what="ready after config")
        print(f"/readyz 200 {time.monotonic() - t0:.2f}s after the config was put back")
        key, lease = lab.lease_of(1)

        # ---- lease conflict: a squatter value over our key while our etcd lease lives is
        # overwritten at once (the daemon keeps its subnet; it used to give it up)
        squatter = dict(lease, PublicIP="198.18.0.99")
        squatter["BackendData"] = dict(lease["BackendData"], VtepMAC="0e:00:00:00:00:99")
        lab.etcdctl("put", key, json.dumps(squatter))
        poll(lambda: json.loads(lab.etcdctl("get", key, "--print-value-only") or "{}") == lease, 10,
             interval=0.02, what="our lease re-asserted")
        poll(lambda: get(lab, 1, "/readyz") == (200, "ready\n"), 10, interval=0.05, what="ready after conflict")

        # ---- lease lost: our etcd lease is gone (revoked while the daemon was paused) and a
        # squatter holds the key with an etcd lease of its own; the range is full
        ref = lab_daemon.running(lab.state, 1)
        assert ref is not None
        got = json.loads(lab.etcdctl("get", key, "-w", "json"))
        own_lease = int(got["kvs"][0]["lease"])
        os.kill(ref.pid, signal.SIGSTOP)
        try:
            lab.etcdctl("lease", "revoke", f"{own_lease:x}")
            squatter_lease = lab.etcdctl("lease", "grant", "600").split()[1]
            lab.etcdctl("put", key, json.dumps(squatter), "--lease", squatter_lease)
        finally:
            os.kill(ref.pid, signal.SIGCONT)
        poll(lambda: get(lab, 1, "/readyz") == (503, "lease lost\n"), 20, interval=0.05, what="503 lease lost")
        # re-acquiring has failed at least once (out of subnets): still not ready
        poll(lambda: retrying(lab, 1, "acquiring a subnet lease"), 20, interval=0.1, what="re-acquire retry logged")
        assert get(lab, 1, "/readyz") == (503, "lease lost\n")
        assert get(lab, 1, "/healthz") == (200, "running")

        lab.etcdctl("del", key)
        t0 = time.monotonic()
        poll(lambda: get(lab, 1, "/readyz") == (200, "ready\n"), 40, interval=0.05, what="ready after re-acquire")
        print(f"/readyz 200 {time.monotonic() - t0:.2f}s after the squatter lease was deleted")
        assert lab.lease_of(1)[0] == key  # the same subnet came back
