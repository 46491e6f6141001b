"""Nothing listens beyond loopback unless configured; state files are atomic with tight modes.

In a 2-node vxlan lab (flabf8), n1's flanneld runs with the lab's defaults (--healthz-port 0),
then with --healthz-port, then with --healthz-ip on the underlay address; ``ss -lntup`` inside
the node namespace shows what it listens on each time.  The files a node keeps (subnet.env,
docker options, CNI conflist, the CNI plugin's saved delegate configs) are checked for modes,
for leftover temp files, and for being replaced by rename (a new inode) rather than rewritten.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import FLANNELD_TEST_ARGS, HEALTHZ_PORT, FaultLab, fault_lab, figure, poll, require_flanneld
from netnslab.proc import nsexec, run

pytestmark = pytest.mark.fault

NODE = 1
VXLAN_PORT = "8472"  # the kernel's vxlan socket (configured by the backend), owned by no process


@pytest.fixture(scope="module")
def lab() -> Iterator[FaultLab]:
    require_flanneld()
    with fault_lab("flabf8", nodes=2, backend="vxlan", pods_per_node=1,
                   flanneld_args=FLANNELD_TEST_ARGS) as h:  # fmt: skip
        yield h


def _listeners(lab: FaultLab, node: int) -> list[tuple[str, str, str]]:
    """(proto, local address:port, owner) of every listening TCP/UDP socket in the node."""
    out = run(nsexec(lab.node_ns(node), ["ss", "-H", "-lntup"])).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        owner = cols[6] if len(cols) > 6 else ""
        found.append((cols[0], cols[4], owner))
    return found


def _flanneld_listeners(lab: FaultLab, node: int) -> list[str]:
    """Listening sockets of the node; fails on any that is neither flanneld's nor vxlan's."""
    pid = lab.flanneld_pid(node)
    mine, strangers = [], []
    for proto, local, owner in _listeners(lab, node):
        if f"pid={pid}," in owner:
            mine.append(f"{proto}:{local}")
        elif not (proto == "udp" and local.endswith(f":{VXLAN_PORT}") and not owner):
            strangers.append(f"{proto}:{local} {owner}")
    assert not strangers, f"unexpected listeners in {lab.node_ns(node)}: {strangers}"
    return sorted(mine)


def _restart(lab: FaultLab, node: int, *extra: str) -> None:
    lab.kill_flanneld(node)
    lab.start_flanneld_with(node, *extra)


def _restart_listening(lab: FaultLab, node: int, *extra: str) -> list[str]:
    """Restart with ``extra`` flags (a --healthz-port); flanneld's listeners once it has some."""
    _restart(lab, node, *extra)
    found: list[str] = []

    def listening() -> bool:
        try:
            found[:] = _flanneld_listeners(lab, node)
        except AssertionError:
            return False  # the killed daemon's socket may linger for a moment, ownerless
        return bool(found)

    poll(listening, 15.0, 0.05, f"n{node}: flanneld listening after restart")
    return _flanneld_listeners(lab, node)  # and nothing else listens once it settled


def test_listens_only_where_configured(lab: FaultLab) -> None:
    default = _flanneld_listeners(lab, NODE)
    assert default == [], f"flanneld with --healthz-port 0 listens on {default}"
    loopback = _restart_listening(lab, NODE, f"--healthz-port={HEALTHZ_PORT}")
    assert loopback == [f"tcp:127.0.0.1:{HEALTHZ_PORT}"], loopback
    underlay = lab.public_ip(NODE)
    configured = _restart_listening(lab, NODE, f"--healthz-port={HEALTHZ_PORT}", f"--healthz-ip={underlay}")
    assert configured == [f"tcp:{underlay}:{HEALTHZ_PORT}"], configured
    figure("listeners", default=len(default), healthz_port=";".join(loopback),
           healthz_ip=";".join(configured))  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_state_files_atomic_with_tight_modes(lab: FaultLab) -> None:
    node_dir = lab.state.node_dir(NODE)
    subnet_env = lab.state.subnet_file(NODE)
    docker_env = node_dir / "docker.env"
    conflist = node_dir / "net.d" / "10-flannel.conflist"
    inode = subnet_env.stat().st_ino
    _restart(lab, NODE, f"--docker-opts-file={docker_env}", f"--cni-conf-file={conflist}")
    # The restarted daemon writes its files once it holds the lease: a new inode, never the old
    # file rewritten in place (fails after 15 s if the write never comes or is in place).
    poll(lambda: conflist.exists() and subnet_env.stat().st_ino != inode, 15.0, 0.05,
         "subnet.env replaced by rename after the restart")
    modes = {p.name: _mode(p) for p in (subnet_env, docker_env, conflist)}
    assert modes == {"subnet.env": 0o644, "docker.env": 0o644, "10-flannel.conflist": 0o644}, modes
    cni_dir = node_dir / "cni"
    saved = sorted(cni_dir.iterdir())
    assert saved, f"no saved CNI state in {cni_dir}"
    assert _mode(cni_dir) == 0o700, oct(_mode(cni_dir))
    bad = {p.name: oct(_mode(p)) for p in saved if _mode(p) != 0o600}
    assert not bad, f"saved CNI state not 0600: {bad}"
    leftovers = {str(d): _temp_files(d) for d in (node_dir, cni_dir, conflist.parent) if _temp_files(d)}
    assert not leftovers, f"temp files left behind: {leftovers}"
    assert all(os.stat(p).st_uid == 0 for p in (subnet_env, docker_env, conflist, *saved))
    figure("state-files", subnet_env=oct(modes["subnet.env"]), docker_opts=oct(modes["docker.env"]),
           conflist=oct(modes["10-flannel.conflist"]), cni_dir=oct(_mode(cni_dir)),
           cni_state=oct(_mode(saved[0])), temp_files=0, replaced_by_rename=1)  # fmt: skip
