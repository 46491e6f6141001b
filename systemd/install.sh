#!/usr/bin/env bash
# Install flanneld as a systemd service, from a checkout of this repository.
#
#   sudo systemd/install.sh [--docker] [--no-python] [--no-start]
#
# What goes where (DESTDIR prefixes every path, for packaging and tests):
#   /opt/flanneld/                          a venv holding this package (skipped by --no-python)
#   /usr/local/bin/flanneld, flannelctl     symlinks into that venv
#   /etc/systemd/system/flanneld.service    the unit (Type=notify, watchdog, capabilities)
#   /etc/default/flanneld                   flags; installed only if absent (yours is kept)
#   /usr/local/libexec/flanneld/mk-docker-opts.sh
#   /etc/systemd/system/docker.service.d/flannel.conf   with --docker only
#   /usr/local/share/doc/flanneld/operations.md
# Then, on a host running systemd and without DESTDIR: daemon-reload, enable --now flanneld.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dest="${DESTDIR:-}"
venv="${FLANNELD_VENV:-/opt/flanneld}"
python="${PYTHON:-python3}"
docker=no
with_python=yes
start=yes

for arg in "$@"; do
    case "$arg" in
        --docker) docker=yes ;;
        --no-python) with_python=no ;;
        --no-start) start=no ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or set DESTDIR for a staged install)" >&2
    exit 2
fi

if [ "$with_python" = yes ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "install.sh: Python >= 3.11 required" >&2; exit 1; }
    [ -x "$dest$venv/bin/python" ] || "$python" -m venv "$dest$venv"
    "$dest$venv/bin/pip" install -q --disable-pip-version-check --upgrade "$repo"
    install -d "$dest/usr/local/bin"
    for tool in flanneld flannelctl; do
        if [ -e "$dest$venv/bin/$tool" ]; then
            ln -sfn "$venv/bin/$tool" "$dest/usr/local/bin/$tool"
        fi
    done
fi

install -D -m 0644 "$here/flanneld.service" "$dest/etc/systemd/system/flanneld.service"
if [ ! -e "$dest/etc/default/flanneld" ]; then
    install -D -m 0644 "$here/flanneld.default" "$dest/etc/default/flanneld"
fi
install -D -m 0755 "$here/mk-docker-opts.sh" "$dest/usr/local/libexec/flanneld/mk-docker-opts.sh"
if [ -e "$repo/docs/operations.md" ]; then
    install -D -m 0644 "$repo/docs/operations.md" "$dest/usr/local/share/doc/flanneld/operations.md"
fi
if [ "$docker" = yes ]; then
    install -D -m 0644 "$here/docker-flannel.conf" \
        "$dest/etc/systemd/system/docker.service.d/flannel.conf"
fi

if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$start" = yes ]; then
        systemctl enable --now flanneld.service
        [ "$docker" = no ] || systemctl try-restart docker.service
    else
        systemctl enable flanneld.service
    fi
else
    echo "install.sh: files installed under ${dest:-/}; systemd not running here, nothing started" >&2
fi
