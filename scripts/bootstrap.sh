#!/usr/bin/env bash
# Idempotent setup of a fresh Debian 12 machine, as root: the Debian packages the daemon,
# the lab and the tests use, and a .venv/ at the repository root holding this package
# (so .venv/bin/flanneld, .venv/bin/flannelctl and .venv/bin/flannel exist).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: run as root (network namespaces, netlink and apt need it)" >&2
    exit 2
fi

debs=(etcd-server etcd-client iproute2 nftables iptables iperf3 tshark
      containernetworking-plugins iputils-ping prometheus tcpdump ethtool
      libpcap0.8 procps gcc libc6-dev openssl python3-venv curl
      wireguard-go wireguard-tools util-linux)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
# Debian enables etcd.service on 127.0.0.1:2379; the project starts its own etcd on other ports.

# Debian's own interpreter by default: it is built with PGO and LTO and linked statically, and
# the udp datapath's round-trip time is made of Python running cold after each wake-up (RTT
# p50 0.35 ms here vs 0.37 ms under an unoptimised shared-library build: docs/udp.md).
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x /usr/bin/python3 ]; then
    py=/usr/bin/python3
else
    py=python3
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: Python >= 3.11 is required ($py is $("$py" --version 2>&1))" >&2
    exit 1
fi
want_home="$("$py" -c 'import os, sys; print(os.path.dirname(os.path.abspath(sys._base_executable)))')"
if [ -f .venv/pyvenv.cfg ] && ! grep -qx "home = $want_home" .venv/pyvenv.cfg; then
    echo "bootstrap: .venv was made with another interpreter; recreating it with $py" >&2
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    "$py" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "setuptools>=68" wheel >&2
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
    echo "bootstrap: installing the package and its dependencies into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" \
        --config-settings editable_mode=strict >&2
    rm -f .venv/.installed-*
    touch "$stamp"
else
    # strict editable mode links files: refresh the link tree for files added since.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
        --config-settings editable_mode=strict >&2
fi

# The CNI plugin executable (`flannel`): a launcher that starts Python with -I -S for speed.
bash cni-plugin/install-launcher.sh .venv >&2

bash scripts/kube-tools.sh >&2  # kube tier: kube-apiserver + kubectl, built once (~7 min), cached
