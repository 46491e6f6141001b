#!/bin/sh
# Install flanneld-py's `flannel` CNI plugin on the node, from the kube-flannel DaemonSet's
# install-cni-plugin init container:
#
#     install-cni-plugin.sh [--host-root /host] [--dest /opt/cni/bin] [--src DIR]
#
# The plugin is executed by the container runtime ON THE HOST, outside any container, so it runs
# on the host's Python.  It is pure standard library (cni-plugin/ imports nothing else), so what
# is installed is the plugin's sources plus a launcher for the host's own python3 >= 3.11:
#
#   DEST/flannel                         the launcher: `#!/usr/bin/python3.N -IS`, registers the
#                                        package from the sources below and runs its main()
#   DEST/.flanneld-py/<hash>/flanneld/cni/*.py   the sources (one directory per content hash;
#                                        the host's Python caches its bytecode there)
#
# The interpreter is found by name under the host's /usr (mounted read-only at HOST_ROOT/usr):
# python3.N for N >= 11 in /usr/bin, then /usr/local/bin, newest first.  It cannot be run from
# here (it links against the host's libraries), so the launcher checks the version again at
# every start and answers a CNI error naming the interpreter if it is older.  No interpreter:
# this script fails (the init container, hence the pod, does not start) and says what to do.
#
# Updates are atomic: the new sources go into a new directory, the launcher is renamed into
# place, then older source directories are removed.
set -eu

host_root=/host
dest=/opt/cni/bin
src="$(cd "$(dirname "$0")" && pwd)/cni-plugin"
min_minor=11
while [ $# -gt 0 ]; do
    case "$1" in
        --host-root) host_root="$2"; shift 2 ;;
        --dest) dest="$2"; shift 2 ;;
        --src) src="$2"; shift 2 ;;
        *) echo "install-cni-plugin: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -f "$src/main.py" ] || { echo "install-cni-plugin: no plugin sources in $src" >&2; exit 1; }

py=""
for dir in /usr/bin /usr/local/bin; do
    minor=30
    while [ "$minor" -ge "$min_minor" ]; do
        cand="$dir/python3.$minor"
        if [ -e "$host_root$cand" ] || [ -L "$host_root$cand" ]; then
            py="$cand"
            break 2
        fi
        minor=$((minor - 1))
    done
done
if [ -z "$py" ]; then
    echo "install-cni-plugin: the node has no python3.$min_minor or newer in /usr/bin or" \
         "/usr/local/bin (looked under $host_root/usr); the flanneld-py CNI plugin runs on the" \
         "node's Python: install python3 >= 3.$min_minor on the node (Debian 12, Ubuntu 24.04," \
         "Fedora 37+ ship one) or use Go flannel's CNI plugin binary as /opt/cni/bin/flannel" >&2
    exit 1
fi

mkdir -p "$dest/.flanneld-py"
hash="$(cat "$src"/*.py | sha256sum | cut -c1-16)"
lib="$dest/.flanneld-py/$hash"
if [ ! -f "$lib/flanneld/cni/main.py" ]; then
    tmp="$dest/.flanneld-py/.new-$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/flanneld/cni"
    cp "$src"/*.py "$tmp/flanneld/cni/"
    : >"$tmp/flanneld/__init__.py"
    rm -rf "$lib"
    mv "$tmp" "$lib"
fi

# Runtime paths are the host's: $dest as seen by the host is /opt/cni/bin unless overridden.
host_lib="${HOST_DEST:-/opt/cni/bin}/.flanneld-py/$hash"
launcher="$dest/.flannel.new-$$"
cat >"$launcher" <<PY
#!$py -IS
# flanneld-py CNI plugin launcher, written by install-cni-plugin.sh (sources: $host_lib)
import sys
if sys.version_info < (3, $min_minor):
    sys.stdout.write('{"cniVersion": "0.3.1", "code": 999, "msg": "the flanneld-py CNI plugin '
                     'needs python3 >= 3.$min_minor; %s is %d.%d"}\n'
                     % (sys.executable, sys.version_info[0], sys.version_info[1]))
    sys.exit(1)
for _name, _dir in (("flanneld", "$host_lib/flanneld"), ("flanneld.cni", "$host_lib/flanneld/cni")):
    if _name not in sys.modules:
        _mod = type(sys)(_name)
        _mod.__path__ = [_dir]
        sys.modules[_name] = _mod
from flanneld.cni.main import main
sys.exit(main())
PY
chmod 0755 "$launcher"
mv -f "$launcher" "$dest/flannel"
for old in "$dest"/.flanneld-py/*; do
    [ "$old" = "$lib" ] || rm -rf "$old"
done
echo "install-cni-plugin: $dest/flannel -> $py, sources $host_lib" >&2
