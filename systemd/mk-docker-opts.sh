#!/bin/sh
# Turn flannel's subnet.env into docker daemon options: a drop-in for Go flannel's
# dist/mk-docker-opts.sh, with its options and byte-identical output.
# Used by docker-flannel.conf (ExecStartPre of docker.service).
#
# Matched against: flannel-io/flannel dist/mk-docker-opts.sh at commit
# 74b5e5061db72edb2e6911e11e60ff5bd0871d63 (the "#!/bin/sh" version of flannel v0.2x:
# getopts "f:d:icmk:?h", --ip-masq=true for FLANNEL_IPMASQ=false, the routing-table check at
# the end), run by /bin/sh = dash.  The older bash version (commit 10bbafb8) differs: no -m,
# no --ip-masq=true, a trailing blank in DOCKER_OPTS.  Golden tests:
# tests/ops/test_ops_docker_opts.py, tests/ops/golden/docker-opts/.
#
#   -f FILE  subnet file (default /run/flannel/subnet.env)
#   -d FILE  output (default /run/docker_opts.env)
#   -i       the individual variables only (DOCKER_OPT_BIP=..., ...)
#   -c       the combined variable only (DOCKER_OPTS=...)
#            neither or both: individual variables, then the combined one
#   -m       no --ip-masq option (DOCKER_OPT_IPMASQ is not written)
#   -k KEY   name of the combined variable (default DOCKER_OPTS)
#
# For FLANNEL_SUBNET=10.1.74.1/24 FLANNEL_MTU=1472 FLANNEL_IPMASQ=false it writes
#   DOCKER_OPT_BIP="--bip=10.1.74.1/24"
#   DOCKER_OPT_IPMASQ="--ip-masq=true"
#   DOCKER_OPT_MTU="--mtu=1472"
#   DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
# docker's --ip-masq is the inverse of FLANNEL_IPMASQ: when flannel masquerades, docker need
# not; without FLANNEL_IPMASQ there is no --ip-masq option; any other value is an error.
# As in Go's script, the individual variables are every variable whose name contains
# DOCKER_OPT_, sorted by name (the three above and any the subnet file defines), and the
# combined value starts with the subnet file's own $KEY and a blank, if it sets one.
#
# Deliberate differences from Go's script (the output for a given subnet file is the same):
# - The environment is ignored (DOCKER_OPT_*, the combined KEY, FLANNEL_*): docker.service's
#   EnvironmentFile=/run/docker_opts.env hands the previous output to ExecStartPre, with which
#   Go's script prepends the old $DOCKER_OPTS again on every docker restart.
# - A missing subnet file, or one without FLANNEL_SUBNET or FLANNEL_MTU, is an error (Go's
#   script writes DOCKER_OPTS="" and docker starts without --bip).
# - The output is replaced atomically (temporary file + rename), mode 0644.
# - KEY must be a shell variable name (Go's script passes it to eval).
# - Values are copied verbatim (Go's script echoes them unquoted, splitting any with blanks).
# - The routing-table check (exit 1, after the output is written, when the main table routes
#   our subnet via a gateway) matches the subnet exactly; Go's script greps for it as a
#   pattern (10.1.74.0/24 also matches 110.1.74.0/24).
set -eu

usage() {
    echo "$0 [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
	-f	Path to flannel env file. Defaults to /run/flannel/subnet.env
	-d	Path to Docker env file to write to. Defaults to /run/docker_opts.env
	-i	Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
	-c	Output combined Docker options into DOCKER_OPTS var
	-k	Set the combined options key to this value (default DOCKER_OPTS=)
	-m	Do not output --ip-masq (useful for older Docker version)
" >&2
    exit 1
}

mkdo_in=/run/flannel/subnet.env
mkdo_out=/run/docker_opts.env
mkdo_key=DOCKER_OPTS
mkdo_indiv=false
mkdo_combined=false
mkdo_ipmasq=true
while getopts f:d:icmk:h mkdo_opt; do
    case "$mkdo_opt" in
        f) mkdo_in=$OPTARG ;;
        d) mkdo_out=$OPTARG ;;
        i) mkdo_indiv=true ;;
        c) mkdo_combined=true ;;
        m) mkdo_ipmasq=false ;;
        k) mkdo_key=$OPTARG ;;
        *) usage ;;
    esac
done
if [ "$mkdo_indiv" = false ] && [ "$mkdo_combined" = false ]; then
    mkdo_indiv=true
    mkdo_combined=true
fi
case "$mkdo_key" in
    '' | [0-9]* | *[!A-Za-z0-9_]* | mkdo_*)
        echo "$0: -k $mkdo_key: not a variable name (or one of this script's)" >&2
        exit 1
        ;;
esac

# Only the subnet file counts: forget what the environment says.
for mkdo_name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
    case "$mkdo_name" in
        *DOCKER_OPT_* | FLANNEL_*) unset "$mkdo_name" ;;
    esac
done
unset "$mkdo_key"

case "$mkdo_in" in
    */*) ;;
    *) mkdo_in=./$mkdo_in ;; # "." would search $PATH for a bare name
esac
if [ ! -r "$mkdo_in" ] || [ -d "$mkdo_in" ]; then
    echo "$0: cannot read $mkdo_in" >&2
    exit 1
fi
# shellcheck disable=SC1090
. "$mkdo_in"
: "${FLANNEL_SUBNET:?missing in $mkdo_in}" "${FLANNEL_MTU:?missing in $mkdo_in}"

DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET"
DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU"
if [ -n "${FLANNEL_IPMASQ:-}" ] && [ "$mkdo_ipmasq" = true ]; then
    case "$FLANNEL_IPMASQ" in
        true) DOCKER_OPT_IPMASQ="--ip-masq=false" ;;
        false) DOCKER_OPT_IPMASQ="--ip-masq=true" ;;
        *)
            echo "Invalid value of FLANNEL_IPMASQ: $FLANNEL_IPMASQ" >&2
            exit 1
            ;;
    esac
fi

eval "mkdo_all=\${$mkdo_key-}"
if [ -n "$mkdo_all" ]; then
    mkdo_all="$mkdo_all "
fi
# Every set variable whose name contains DOCKER_OPT_, in byte order of the names (`set` sorts
# like that; Go's script walks `set | grep DOCKER_OPT_`).
mkdo_names=$(set | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' | grep DOCKER_OPT_ | LC_ALL=C sort -u) || true

umask 022
mkdo_tmp="$mkdo_out.tmp.$$"
trap 'rm -f "$mkdo_tmp"' EXIT
{
    for mkdo_name in $mkdo_names; do
        eval "[ \"\${$mkdo_name+set}\" = set ]" || continue
        eval "mkdo_value=\$$mkdo_name"
        if [ "$mkdo_indiv" = true ]; then
            printf '%s="%s"\n' "$mkdo_name" "$mkdo_value"
        fi
        mkdo_all="$mkdo_all $mkdo_value"
    done
    if [ "$mkdo_combined" = true ]; then
        printf '%s="%s"\n' "$mkdo_key" "$mkdo_all"
    fi
} >"$mkdo_tmp"
mv -f "$mkdo_tmp" "$mkdo_out"
trap - EXIT

# Go's check: our subnet (FLANNEL_SUBNET's last octet minus one) routed via a gateway in the
# main table means a stale or foreign route; fail so that docker does not start on it.
mkdo_addr=${FLANNEL_SUBNET%/*}
mkdo_last=${mkdo_addr##*.}
case "$FLANNEL_SUBNET:$mkdo_last" in
    */*:[1-9] | */*:[1-9][0-9] | */*:[1-2][0-9][0-9])
        mkdo_net="${mkdo_addr%.*}.$((mkdo_last - 1))/${FLANNEL_SUBNET#*/}"
        if command -v ip >/dev/null 2>&1; then
            mkdo_route=$(ip -4 route show exact "$mkdo_net" 2>/dev/null | grep ' via ') || true
            if [ -n "$mkdo_route" ]; then
                echo "Your routing table already contains the subnet: $mkdo_route" >&2
                exit 1
            fi
        fi
        ;;
esac
