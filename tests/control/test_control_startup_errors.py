"""Start-up mistakes an operator makes: one clear line and a non-zero exit, checked before
anything is changed (no lease taken, no rule written), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from etcd_server import EtcdServer, etcdctl

pytestmark = pytest.mark.etcd
FLANNELD = str(Path(sys.executable).parent / "flanneld")


def flanneld(server: EtcdServer, prefix: str, *args: str, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    return subprocess.run([*wrap, FLANNELD, "--etcd-endpoints", server.endpoint, "--etcd-prefix", prefix, *args],
                          env=env, capture_output=True, text=True, timeout=60)


def no_lease_taken(server: EtcdServer, prefix: str) -> bool:
    return etcdctl(server, "get", "--prefix", "--keys-only", f"{prefix}/subnets/").strip() == ""


@pytest.mark.parametrize("make", ["directory", "parent_is_a_file"])
def test_a_subnet_file_that_can_never_be_written_is_refused_first(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path, make: str
) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config", json.dumps({"Network": "10.9.0.0/16"}))
    if make == "directory":
        path = tmp_path / "subnet.env"
        path.mkdir()
        want = "is a directory"
    else:
        (tmp_path / "run").write_text("x")
        path = tmp_path / "run" / "flannel" / "subnet.env"
        want = "is not a directory"
    r = flanneld(etcd_server, etcd_prefix, "--subnet-file", str(path))
    assert r.returncode == 2, r.stderr
    assert f"--subnet-file {path}" in r.stderr and want in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert no_lease_taken(etcd_server, etcd_prefix)


def test_a_busy_health_port_is_one_line_and_exit_1(etcd_server: EtcdServer, etcd_prefix: str,
                                                  tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = flanneld(etcd_server, etcd_prefix, "--subnet-file", str(tmp_path / "s.env"),
                     "--healthz-port", str(port))
    finally:
        busy.close()
    assert r.returncode == 1, r.stderr
    assert f"--healthz-ip/--healthz-port 127.0.0.1:{port}: cannot listen: Address already in use" in r.stderr
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if "cannot listen" in line)
    assert all("flanneld stopped" not in line for line in lines[:error]), r.stderr
    assert no_lease_taken(etcd_server, etcd_prefix)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_cap_net_admin_it_says_so_once(etcd_server: EtcdServer, etcd_prefix: str,
                                               tmp_path: Path) -> None:
    etcdctl(etcd_server, "put", f"{etcd_prefix}/config",
            json.dumps({"Network": "10.9.0.0/16", "Backend": {"Type": "vxlan"}}))
    r = flanneld(etcd_server, etcd_prefix, "--subnet-file", str(tmp_path / "s.env"),
                 wrap=("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("needs root or CAP_NET_ADMIN") == 1, r.stderr
    assert "iptables" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert no_lease_taken(etcd_server, etcd_prefix)


def test_ignored_go_flags_are_named_once_at_start(etcd_server: EtcdServer, etcd_prefix: str,
                                                  tmp_path: Path) -> None:
    r = flanneld(etcd_server, etcd_prefix, "--subnet-file", str(tmp_path), "--vmodule=main=3",
                 "-logtostderr", "--ip-blackhole-route")
    assert r.returncode == 2, r.stderr  # the subnet file is a directory: stops right after
    warnings = [line for line in r.stderr.splitlines() if "flags accepted but ignored" in line]
    assert len(warnings) == 1, r.stderr
    for flag in ("--vmodule", "--logtostderr", "--ip-blackhole-route"):
        assert flag in warnings[0], warnings[0]
