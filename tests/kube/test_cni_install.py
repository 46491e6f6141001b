"""deploy/image/install-cni-plugin.sh (the DaemonSet's install-cni-plugin init container) against
a fake host root: picks the host's python3 >= 3.11, installs a launcher that runs the plugin on
it, refuses (naming the fix) when there is none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "image" / "install-cni-plugin.sh"
SOURCES = REPO / "cni-plugin"
HOST_PY = Path(f"/usr/bin/python3.{sys.version_info.minor}")


def install(host: Path, dest: Path, src: Path = SOURCES) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOST_DEST=str(dest))  # the launcher's paths: dest as the host sees it
    return subprocess.run(["sh", str(SCRIPT), "--host-root", str(host), "--dest", str(dest), "--src", str(src)],
                          capture_output=True, text=True, env=env, check=False, timeout=60)


def fake_host(tmp_path: Path, *pythons: str) -> Path:
    host = tmp_path / "host"
    for p in pythons:
        path = host / p.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(HOST_PY)  # as Debian's, a link; never executed by the script
    (host / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    return host


@pytest.mark.skipif(not HOST_PY.exists() or sys.version_info < (3, 11), reason="needs /usr/bin/python3.11+")
def test_installs_a_launcher_for_the_host_python_and_it_runs(tmp_path: Path) -> None:
    host = fake_host(tmp_path, str(HOST_PY), "/usr/bin/python3.9")
    dest = tmp_path / "opt-cni-bin"
    dest.mkdir()
    res = install(host, dest)
    assert res.returncode == 0, res.stderr
    launcher = dest / "flannel"
    assert launcher.read_text().splitlines()[0] == f"#!{HOST_PY} -IS"
    assert os.access(launcher, os.X_OK)
    libs = list((dest / ".flanneld-py").iterdir())
    assert len(libs) == 1 and (libs[0] / "flanneld" / "cni" / "main.py").is_file()
    # The runtime calls it like any plugin: VERSION needs no network and no root.
    out = subprocess.run([str(launcher)], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                         env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    versions = json.loads(out.stdout)
    assert "0.3.1" in versions["supportedVersions"] and "1.0.0" in versions["supportedVersions"]

    # Again with changed sources: a new directory, the launcher switched to it, the old one gone.
    src = tmp_path / "src"
    shutil.copytree(SOURCES, src, ignore=shutil.ignore_patterns("__pycache__", "*.sh"))
    (src / "main.py").write_text((src / "main.py").read_text() + "\n# changed\n")
    assert install(host, dest, src).returncode == 0
    (lib,) = list((dest / ".flanneld-py").iterdir())
    assert lib != libs[0] and str(lib) in launcher.read_text()
    assert not [p for p in dest.iterdir() if p.name.startswith(".flannel.new")]


def test_prefers_the_newest_python_in_usr_bin(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "/usr/bin/python3.11", "/usr/bin/python3.12", "/usr/local/bin/python3.13")
    dest = tmp_path / "bin"
    dest.mkdir()
    assert install(host, dest).returncode == 0
    assert (dest / "flannel").read_text().splitlines()[0] == "#!/usr/bin/python3.12 -IS"


def test_usr_local_python_when_usr_bin_has_none_new_enough(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "/usr/bin/python3.9", "/usr/local/bin/python3.11")
    dest = tmp_path / "bin"
    dest.mkdir()
    assert install(host, dest).returncode == 0
    assert (dest / "flannel").read_text().splitlines()[0] == "#!/usr/local/bin/python3.11 -IS"


def test_refuses_without_python_311(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "/usr/bin/python3.9", "/usr/bin/python3.10")
    dest = tmp_path / "bin"
    dest.mkdir()
    res = install(host, dest)
    assert res.returncode == 1
    assert "the node has no python3.11 or newer" in res.stderr
    assert "install python3 >= 3.11 on the node" in res.stderr
    assert list(dest.iterdir()) == []  # nothing half-installed
