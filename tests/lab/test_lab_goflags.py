"""A Go flanneld command line, as unit files and scripts in the wild write it, runs our daemon:
single-dash flags with ``=`` and with separate values, a bare bool, klog's ``--v=2`` and
klog's ignored flags.  Both nodes of a 2-node vxlan lab are restarted with such a line (and
nothing else: not the lab's own ``--etcd-endpoints ...`` prefix), then every pod reaches every
other pod.  ``--v=2`` is ``-v``: the daemon's debug, never a library's debug line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from labkit import DRIFT_INTERVAL, LabHandle, lab_running, poll, require_flanneld
from netnslab import daemon, pingmatrix
from netnslab.proc import alive, nsexec, spawn
from netnslab.state import VENV_BIN, read_subnet_env

pytestmark = pytest.mark.lab

NODES = (1, 2)


def go_command_line(lab: LabHandle, node: int) -> list[str]:
    state = lab.state
    return [
        str(VENV_BIN / "flanneld"),
        f"-etcd-endpoints={lab.names.etcd_endpoint}",
        "-ip-masq",
        "--v=2",
        f"-iface={lab.names.uplink}",
        f"-subnet-file={state.subnet_file(node)}",
        "-healthz-port", "0",
        "--logtostderr",
        "-vmodule=main=3",
        "-iptables-resync", "5",
        f"-drift-interval={DRIFT_INTERVAL:g}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def go_cluster() -> Iterator[tuple[LabHandle, dict[int, int]]]:
    """The lab, both daemons restarted with the Go-style line; node -> log offset of that run."""
    require_flanneld()
    with lab_running("flabtgf", nodes=2, backend="vxlan", pods_per_node=1) as h:
        offsets: dict[int, int] = {}
        for node in NODES:
            h.kill_flanneld(node)
            state = h.state
            log = daemon.log_file(state, node)
            offsets[node] = log.stat().st_size if log.exists() else 0
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
            env["PYTHONUNBUFFERED"] = "1"
            since = time.time() - 0.05
            ref = spawn(nsexec(h.node_ns(node), go_command_line(h, node)), log, env)
            # Recorded where the lab looks, so `lab down` (always, in lab_running) stops it.
            daemon.pid_file(state, node).write_text(ref.dump())
            daemon.wait_subnet_file(state, node, ref, 30.0, since)
        yield h, offsets


def _run_log(lab: LabHandle, node: int, offset: int) -> list[str]:
    text = daemon.log_file(lab.state, node).read_text(errors="replace")
    return text[offset:].splitlines()


def test_go_style_command_line_runs_and_pods_reach_each_other(
    go_cluster: tuple[LabHandle, dict[int, int]],
) -> None:
    lab, offsets = go_cluster
    for node in NODES:
        ref = daemon.running(lab.state, node)
        assert ref is not None and alive(ref), f"n{node}:\n" + "\n".join(_run_log(lab, node, offsets[node]))
        env = read_subnet_env(lab.state.subnet_file(node))
        assert env["FLANNEL_IPMASQ"] == "true"  # the bare single-dash bool -ip-masq
    plist = lab.state.pods()

    def all_reach() -> bool:
        return all(r.ok for r in pingmatrix.ping_all(plist))

    poll(all_reach, 10.0, 0.2, "every pod pair reachable")
    results = pingmatrix.ping_all(plist)
    assert all(r.ok for r in results), "\n" + pingmatrix.render(plist, results, lab.name)


def test_v2_is_daemon_debug_without_library_debug(go_cluster: tuple[LabHandle, dict[int, int]]) -> None:
    lab, offsets = go_cluster
    for node in NODES:
        lines = _run_log(lab, node, offsets[node])
        assert lines, f"n{node}: no log"
        assert not any("unrecognized" in line or "Traceback" in line for line in lines), lines
        quiet = ("level=debug", "level=info")
        library = [
            line for line in lines
            if any(q in line for q in quiet) and "logger=" in line and " logger=flanneld" not in line
        ]
        assert not library, f"n{node}: library lines below warning at --v=2:\n" + "\n".join(library[:5])
