#!/bin/sh
# Turn /run/flannel/subnet.env into docker options, like flannel's mk-docker-opts.sh.
# Used by docker-flannel.conf (ExecStartPre of docker.service).
#   -f FILE  subnet file (default /run/flannel/subnet.env)
#   -d FILE  output (default /run/docker_opts.env)
# docker's --ip-masq is the inverse of FLANNEL_IPMASQ: when flannel masquerades, docker need not.
set -eu
subnet_file=/run/flannel/subnet.env
out=/run/docker_opts.env
while getopts f:d: opt; do
    case "$opt" in
        f) subnet_file=$OPTARG ;;
        d) out=$OPTARG ;;
        *) echo "usage: $0 [-f subnet.env] [-d output]" >&2; exit 2 ;;
    esac
done
FLANNEL_SUBNET= FLANNEL_MTU= FLANNEL_IPMASQ=
# shellcheck disable=SC1090
. "$subnet_file"
: "${FLANNEL_SUBNET:?missing in $subnet_file}" "${FLANNEL_MTU:?missing in $subnet_file}"
if [ "${FLANNEL_IPMASQ:-false}" = true ]; then ipmasq=false; else ipmasq=true; fi
tmp="$out.tmp.$$"
umask 022
cat >"$tmp" <<OPTS
DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET"
DOCKER_OPT_IPMASQ="--ip-masq=$ipmasq"
DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU"
DOCKER_OPTS=" --bip=$FLANNEL_SUBNET --ip-masq=$ipmasq --mtu=$FLANNEL_MTU"
OPTS
mv -f "$tmp" "$out"
