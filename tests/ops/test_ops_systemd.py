"""systemd/: the units pass `systemd-analyze verify`, the docker options script and install.sh."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def flanneld_binary() -> str:
    """An executable standing in for /usr/local/bin/flanneld (verify checks ExecStart exists)."""
    candidate = Path(sys.executable).parent / "flanneld"
    return str(candidate) if candidate.exists() else "/bin/true"


def verify(unit: Path, unit_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_path}:", SYSTEMD_LOG_COLOR="0")
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def staged_flanneld(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of flanneld.service whose ExecStart points at an existing binary."""
    text = text if text is not None else (SYSTEMD / "flanneld.service").read_text()
    unit = tmp_path / "flanneld.service"
    unit.write_text(text.replace("/usr/local/bin/flanneld", flanneld_binary()))
    return unit


def service_section(path: Path) -> dict[str, str]:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((path).read_text())
    return dict(cp["Service"])


def test_flanneld_service_contract() -> None:
    svc = service_section(SYSTEMD / "flanneld.service")
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"]
    assert svc["Restart"] == "on-failure"
    assert svc["EnvironmentFile"] == "-/etc/default/flanneld"
    assert svc["ExecStart"] == "/usr/local/bin/flanneld $FLANNELD_OPTS"
    assert set(svc["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(svc["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert svc["RuntimeDirectory"] == "flannel"
    assert svc["RuntimeDirectoryPreserve"] == "yes"
    for forbidden in ("PrivateNetwork", "ProtectKernelTunables", "PrivateDevices"):
        assert forbidden not in svc, f"{forbidden} would break the datapath"


@needs_analyze
def test_verify_accepts_flanneld_service(tmp_path: Path) -> None:
    unit = staged_flanneld(tmp_path)
    out = verify(unit, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # verify exits 0 on unknown keys: warnings count


@needs_analyze
def test_verify_notices_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: a typo is reported on stderr.
    text = (SYSTEMD / "flanneld.service").read_text().replace("Type=notify", "Type=notifyy")
    out = verify(staged_flanneld(tmp_path, text), tmp_path)
    assert "notifyy" in out.stderr
    missing = tmp_path / "missing.service"
    missing.write_text((SYSTEMD / "flanneld.service").read_text().replace("/usr/local/bin", "/nonexistent"))
    out = verify(missing, tmp_path)
    assert out.returncode != 0 and "not executable" in out.stderr


@needs_analyze
def test_verify_accepts_docker_dropin(tmp_path: Path) -> None:
    staged_flanneld(tmp_path)
    (tmp_path / "docker.service").write_text(
        "[Unit]\nDescription=stand-in for docker.service\n[Service]\nExecStart=/bin/true -H fd://\n"
    )
    dropin = tmp_path / "docker.service.d"
    dropin.mkdir()
    text = (SYSTEMD / "docker-flannel.conf").read_text()
    assert "/usr/local/libexec/flanneld/mk-docker-opts.sh" in text
    (dropin / "flannel.conf").write_text(
        text.replace("/usr/local/libexec/flanneld/mk-docker-opts.sh", str(SYSTEMD / "mk-docker-opts.sh"))
    )
    out = verify(tmp_path / "docker.service", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
    # and the drop-in was really read: a bad key in it is reported
    (dropin / "flannel.conf").write_text(text + "\nBogusKey=1\n")
    assert "BogusKey" in verify(tmp_path / "docker.service", tmp_path).stderr


@pytest.mark.parametrize(("ipmasq", "docker_masq"), [("true", "false"), ("false", "true")])
def test_mk_docker_opts(tmp_path: Path, ipmasq: str, docker_masq: str) -> None:
    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
        f"FLANNEL_MTU=1472\nFLANNEL_IPMASQ={ipmasq}\n"
    )
    out = tmp_path / "docker_opts.env"
    subprocess.run(
        [str(SYSTEMD / "mk-docker-opts.sh"), "-f", str(subnet_env), "-d", str(out)],
        check=True,
        timeout=10,
    )
    assert out.read_text() == (
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
        f'DOCKER_OPT_IPMASQ="--ip-masq={docker_masq}"\n'
        'DOCKER_OPT_MTU="--mtu=1472"\n'
        f'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq={docker_masq} --mtu=1472"\n'
    )
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_mk_docker_opts_refuses_incomplete_subnet_env(tmp_path: Path) -> None:
    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text("FLANNEL_NETWORK=10.1.0.0/16\n")
    proc = subprocess.run(
        [str(SYSTEMD / "mk-docker-opts.sh"), "-f", str(subnet_env), "-d", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode != 0 and "FLANNEL_SUBNET" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_install_sh_staged(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest))
    cmd = [str(SYSTEMD / "install.sh"), "--no-python", "--docker"]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=60)
    for rel in (
        "etc/systemd/system/flanneld.service",
        "etc/default/flanneld",
        "usr/local/libexec/flanneld/mk-docker-opts.sh",
        "etc/systemd/system/docker.service.d/flannel.conf",
    ):
        assert (dest / rel).is_file(), rel
    assert os.access(dest / "usr/local/libexec/flanneld/mk-docker-opts.sh", os.X_OK)
    # an operator's /etc/default/flanneld survives a reinstall
    (dest / "etc/default/flanneld").write_text("FLANNELD_OPTS=--mine\n")
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=60)
    assert (dest / "etc/default/flanneld").read_text() == "FLANNELD_OPTS=--mine\n"
