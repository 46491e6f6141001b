"""systemd/mk-docker-opts.sh: Go flannel's options and byte-identical output.

Go's script is flannel-io/flannel ``dist/mk-docker-opts.sh`` at commit 74b5e5061db7 (the
``#!/bin/sh`` version with ``getopts "f:d:icmk:?h"``, ``--ip-masq=true`` for
FLANNEL_IPMASQ=false and the routing-table check at the end; see the script's header).  Every
golden file under ``golden/docker-opts/`` was produced by our script (``UPDATE_GOLDEN=1``) and
compared byte for byte with what Go's script writes for the same input and options under
/bin/sh (dash).  The tests also derive each expected text independently, from a model of Go's
logic (:func:`go_model`), so a golden file rewritten by a broken script fails anyway.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from ops_netns import in_ns

from flanneld.subnet_env import SubnetEnv, parse_subnet_env, render_docker_opts, render_subnet_env

SCRIPT = Path(__file__).resolve().parents[2] / "systemd" / "mk-docker-opts.sh"
GOLDEN = Path(__file__).parent / "golden" / "docker-opts"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

# name -> subnet.env text (inputs live beside the goldens as <name>.subnet.env)
INPUTS = {
    # Go's dist/sample_subnet.env
    "sample": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
    "ipmasq": "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    "no-ipmasq": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\n",
    # a hand-extended file: Go's script picks up DOCKER_OPT_* and the combined key from it
    "extras": (
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\n"
        'FLANNEL_IPMASQ=true\nDOCKER_OPTS="--foo --bar"\nDOCKER_OPT_ZZ=--zz\nDOCKER_OPT_A=--a\n'
    ),
}

# (input, options); the golden file is golden/docker-opts/<input><options joined by "_">.env
CASES: list[tuple[str, tuple[str, ...]]] = [
    ("sample", ()),
    ("sample", ("-i",)),
    ("sample", ("-c",)),
    ("sample", ("-i", "-c")),
    ("sample", ("-m",)),
    ("sample", ("-c", "-m")),
    ("sample", ("-i", "-m")),
    ("sample", ("-k", "CUSTOM_KEY")),
    ("sample", ("-c", "-k", "DOCKER_NETWORK_OPTIONS")),
    ("sample", ("-i", "-k", "CUSTOM_KEY")),
    ("ipmasq", ()),
    ("ipmasq", ("-m",)),
    ("ipmasq", ("-c",)),
    ("no-ipmasq", ()),
    ("extras", ()),
    ("extras", ("-c", "-m")),
    ("extras", ("-i",)),
]


def golden_name(name: str, opts: tuple[str, ...]) -> str:
    return name + "".join(f"_{o.lstrip('-')}" for o in opts) + ".env"


def source_like_sh(text: str) -> dict[str, str]:
    """What ``. subnet.env`` defines, for the simple NAME=value / NAME="value" lines used here."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        values[key] = value[1:-1] if value.startswith('"') else value
    return values


def go_model(text: str, opts: tuple[str, ...]) -> str:
    """Go's mk-docker-opts.sh (74b5e5061db7) as Python, for a clean environment."""
    key, indiv, combined, ipmasq = "DOCKER_OPTS", False, False, True
    it = iter(opts)
    for opt in it:
        if opt == "-i":
            indiv = True
        elif opt == "-c":
            combined = True
        elif opt == "-m":
            ipmasq = False
        elif opt == "-k":
            key = next(it)
    if not indiv and not combined:
        indiv = combined = True
    var = source_like_sh(text)
    if var.get("FLANNEL_SUBNET"):
        var["DOCKER_OPT_BIP"] = f"--bip={var['FLANNEL_SUBNET']}"
    if var.get("FLANNEL_MTU"):
        var["DOCKER_OPT_MTU"] = f"--mtu={var['FLANNEL_MTU']}"
    if var.get("FLANNEL_IPMASQ") and ipmasq:
        var["DOCKER_OPT_IPMASQ"] = {"true": "--ip-masq=false", "false": "--ip-masq=true"}[
            var["FLANNEL_IPMASQ"]
        ]
    docker_opts = var.get(key, "")
    if docker_opts:
        docker_opts += " "
    out = ""
    for name in sorted(n for n in var if "DOCKER_OPT_" in n):  # `set | grep`: sorted by name
        if indiv:
            out += f'{name}="{var[name]}"\n'
        docker_opts += f" {var[name]}"
    if combined:
        out += f'{key}="{docker_opts}"\n'
    return out


def run_script(
    tmp_path: Path,
    subnet_env: str,
    *opts: str,
    env: dict[str, str] | None = None,
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    src = tmp_path / "subnet.env"
    src.write_text(subnet_env)
    out = tmp_path / "docker_opts.env"
    proc = subprocess.run(
        wrap([str(SCRIPT), "-f", str(src), "-d", str(out), *opts]),
        capture_output=True,
        text=True,
        env=env if env is not None else CLEAN_ENV,
        timeout=10,
    )
    return proc, out


@pytest.mark.unit
@pytest.mark.parametrize(("name", "opts"), CASES, ids=[golden_name(n, o) for n, o in CASES])
def test_golden(tmp_path: Path, name: str, opts: tuple[str, ...]) -> None:
    proc, out = run_script(tmp_path, INPUTS[name], *opts)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text == go_model(INPUTS[name], opts)
    gold, src = GOLDEN / golden_name(name, opts), GOLDEN / f"{name}.subnet.env"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        gold.write_text(text)
        src.write_text(INPUTS[name])
    assert src.read_text() == INPUTS[name]
    assert text == gold.read_text(), f"{gold.name} differs; UPDATE_GOLDEN=1 rewrites it"
    assert oct(out.stat().st_mode & 0o777) == "0o644"


@pytest.mark.unit
def test_go_testsuite_expectations(tmp_path: Path) -> None:
    """The five cases of Go's own dist/mk_docker_opts_test.go, literally."""
    sample = INPUTS["sample"]
    ind = 'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1472"\n'
    comb = '" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'
    want = {
        (): ind + "DOCKER_OPTS=" + comb,
        ("-i",): ind,
        ("-c",): "DOCKER_OPTS=" + comb,
        ("-k", "CUSTOM_KEY"): ind + "CUSTOM_KEY=" + comb,
        ("-m",): (
            'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'
            'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n'
        ),
    }
    for opts, text in want.items():
        proc, out = run_script(tmp_path, sample, *opts)
        assert proc.returncode == 0, proc.stderr
        assert out.read_text() == text, opts


@pytest.mark.unit
@pytest.mark.parametrize("ipmasq", [True, False])
def test_daemon_writer_equals_script_default(tmp_path: Path, ipmasq: bool) -> None:
    """flanneld's own --docker-opts-file (render_docker_opts) writes what the script writes."""
    env = SubnetEnv(
        network=ipaddress.IPv4Network("10.244.0.0/16"),
        subnet=ipaddress.IPv4Network("10.244.42.0/24"),
        mtu=1450,
        ipmasq=ipmasq,
    )
    proc, out = run_script(tmp_path, render_subnet_env(env))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == render_docker_opts(env)
    assert parse_subnet_env(out.read_text())["DOCKER_OPT_BIP"] == "--bip=10.244.42.1/24"


@pytest.mark.unit
def test_environment_does_not_leak(tmp_path: Path) -> None:
    """docker.service's EnvironmentFile= hands the previous output to ExecStartPre: Go's script
    would prepend the old $DOCKER_OPTS and keep a stale DOCKER_OPT_IPMASQ; ours starts clean."""
    env = dict(
        CLEAN_ENV,
        DOCKER_OPTS=" --bip=10.9.9.1/24 --mtu=1",
        CUSTOM_KEY="--old",
        DOCKER_OPT_IPMASQ="--ip-masq=true",
        DOCKER_OPT_STALE="--stale",
        FLANNEL_MTU="9000",
    )
    for opts in ((), ("-m",), ("-k", "CUSTOM_KEY")):
        proc, out = run_script(tmp_path, INPUTS["sample"], *opts, env=env)
        assert proc.returncode == 0, proc.stderr
        assert out.read_text() == go_model(INPUTS["sample"], opts), opts


@pytest.mark.unit
def test_invalid_ipmasq_is_refused_like_go(tmp_path: Path) -> None:
    text = INPUTS["sample"].replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=yes")
    proc, out = run_script(tmp_path, text)
    assert proc.returncode == 1
    assert "Invalid value of FLANNEL_IPMASQ: yes" in proc.stderr
    assert not out.exists()
    # -m does not look at FLANNEL_IPMASQ at all (Go: the check sits behind `ipmasq = true`)
    proc, out = run_script(tmp_path, text, "-m")
    assert proc.returncode == 0, proc.stderr
    assert "IPMASQ" not in out.read_text()


@pytest.mark.unit
@pytest.mark.parametrize("opts", [("-x",), ("-h",), ("-k",)])
def test_usage(tmp_path: Path, opts: tuple[str, ...]) -> None:
    proc, out = run_script(tmp_path, INPUTS["sample"], *opts)
    assert proc.returncode == 1
    assert "[-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]" in proc.stderr
    assert not out.exists()


@pytest.mark.unit
@pytest.mark.parametrize("key", ["", "A B", "X;touch /tmp/x", "1ABC", "DOCKER-OPTS"])
def test_combined_key_must_be_a_variable_name(tmp_path: Path, key: str) -> None:
    # Go's script would eval it; ours refuses anything that is not a shell variable name.
    proc, out = run_script(tmp_path, INPUTS["sample"], "-k", key)
    assert proc.returncode == 1
    assert "-k" in proc.stderr
    assert not out.exists()


@pytest.mark.unit
def test_relative_subnet_file(tmp_path: Path) -> None:
    (tmp_path / "subnet.env").write_text(INPUTS["sample"])
    proc = subprocess.run(
        [str(SCRIPT), "-f", "subnet.env", "-d", "out.env", "-c"],
        capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path, timeout=10,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.env").read_text() == go_model(INPUTS["sample"], ("-c",))


@pytest.mark.unit
def test_missing_subnet_file_is_an_error(tmp_path: Path) -> None:
    # Go's script skips a missing file and writes DOCKER_OPTS="" (docker would start without
    # --bip); ours keeps refusing, as it always has.
    proc = subprocess.run(
        [str(SCRIPT), "-f", str(tmp_path / "nope.env"), "-d", str(tmp_path / "o")],
        capture_output=True, text=True, env=CLEAN_ENV, timeout=10,
    )  # fmt: skip
    assert proc.returncode != 0 and "nope.env" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.netlink
def test_route_to_own_subnet_via_a_gateway_fails_like_go(
    tmp_path: Path, make_netns: Callable[[str], str]
) -> None:
    """Go's script exits 1 (output already written) when the main table routes our subnet via
    a gateway; docker.service's ExecStartPre then fails instead of docker fighting the route."""
    ns = make_netns("d")
    in_ns(ns, "ip", "link", "add", "fops-d0", "type", "veth", "peer", "name", "fops-d1")
    in_ns(ns, "ip", "addr", "add", "198.18.5.1/24", "dev", "fops-d0")
    in_ns(ns, "ip", "link", "set", "fops-d0", "up")
    in_ns(ns, "ip", "link", "set", "fops-d1", "up")

    def wrap(argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    # a route to another subnet, and our subnet on a device (no gateway): fine
    in_ns(ns, "ip", "route", "add", "10.1.75.0/24", "via", "198.18.5.2")
    in_ns(ns, "ip", "route", "add", "10.1.74.0/24", "dev", "fops-d0")
    proc, out = run_script(tmp_path, INPUTS["sample"], wrap=wrap)
    assert proc.returncode == 0, proc.stderr
    in_ns(ns, "ip", "route", "del", "10.1.74.0/24", "dev", "fops-d0")
    in_ns(ns, "ip", "route", "add", "10.1.74.0/24", "via", "198.18.5.2")
    out.unlink()
    proc, out = run_script(tmp_path, INPUTS["sample"], wrap=wrap)
    assert proc.returncode == 1
    assert "Your routing table already contains the subnet: 10.1.74.0/24 via 198.18.5.2" in proc.stderr
    assert out.read_text() == go_model(INPUTS["sample"], ())
