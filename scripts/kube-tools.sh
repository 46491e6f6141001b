#!/usr/bin/env bash
# Builds, once per machine, the real Kubernetes pieces the `-m kube` tier runs against:
# kube-apiserver v1.20.2 from Debian 12's `kubernetes` source package, and the matching
# kubectl from Debian's `kubernetes-client` (extracted, not installed: another package may own
# /usr/bin/kubectl).  Both land under a fixed cache path and are rebuilt only when missing:
#
#     /var/cache/flanneld-py/kube/bin/kube-apiserver
#     /var/cache/flanneld-py/kube/bin/kubectl
#
# The one fix: under Debian's Go 1.19 the vendored github.com/modern-go/reflect2 v1.0.1 crashes
# the server seconds after start ("fatal error: fault" in map iteration); Debian's
# golang-github-modern-go-reflect2-dev (1.0.2) replaces it.  About 7 minutes on 2 cores.
set -euo pipefail
cache=${FLANNELD_KUBE_CACHE:-/var/cache/flanneld-py/kube}
bin="$cache/bin"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kubectl" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "kube-tools: run as root (apt)" >&2
    exit 2
fi
mkdir -p "$bin"
export DEBIAN_FRONTEND=noninteractive

src_list=/etc/apt/sources.list.d/flanneld-py-deb-src.sources
need=(dpkg-dev golang-go rsync jq golang-github-modern-go-reflect2-dev)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ! -e "$src_list" ]; then
    # The same archive as the machine's deb entries, for source packages.
    cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -q >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "kube-tools: installing Debian packages: ${missing[*]}" >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

work="$cache/build"
rm -rf "$work"
mkdir -p "$work"
cd "$work"

if [ ! -x "$bin/kubectl" ]; then
    echo "kube-tools: extracting kubectl from kubernetes-client" >&2
    apt-get download -q kubernetes-client >&2
    dpkg-deb -x kubernetes-client_*.deb client
    install -m 0755 client/usr/bin/kubectl "$bin/kubectl"
fi

if [ ! -x "$bin/kube-apiserver" ]; then
    echo "kube-tools: building kube-apiserver from Debian's kubernetes source (about 7 min)" >&2
    apt-get source -q kubernetes >&2
    tree="$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
    [ -n "$tree" ] || { echo "kube-tools: no source tree unpacked" >&2; exit 1; }
    # reflect2 1.0.2 in place of the vendored 1.0.1.
    r2=vendor/github.com/modern-go/reflect2
    rm -rf "${tree:?}/$r2"
    mkdir -p "$tree/$r2"
    cp -a /usr/share/gocode/src/github.com/modern-go/reflect2/. "$tree/$r2/"
    sed -i -E 's#(github.com/modern-go/reflect2 => github.com/modern-go/reflect2) v1\.0\.1#\1 v1.0.2#' "$tree/go.mod"
    sed -i -E 's#^(github.com/modern-go/reflect2 )v1\.0\.1#\1v1.0.2#; s#^(\# github.com/modern-go/reflect2 )v1\.0\.1#\1v1.0.2#; s#(=> github.com/modern-go/reflect2 )v1\.0\.1#\1v1.0.2#' "$tree/vendor/modules.txt"
    # The GOPATH layout Debian's debian/rules sets up.
    mkdir -p "$tree/.go/src/k8s.io"
    ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
    (
        cd "$tree/.go/src/k8s.io/kubernetes"
        export GOPATH="$tree/.go" GO111MODULE=on GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$cache/gocache"
        export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
        make WHAT=cmd/kube-apiserver >&2
    )
    out="$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)"
    [ -n "$out" ] || { echo "kube-tools: build produced no kube-apiserver" >&2; exit 1; }
    install -m 0755 "$out" "$bin/kube-apiserver"
fi
rm -rf "$work" "$cache/gocache"
"$bin/kube-apiserver" --version >&2
"$bin/kubectl" version --client >&2 || true
