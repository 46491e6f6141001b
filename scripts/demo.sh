#!/usr/bin/env bash
# The main job on a fresh Debian machine, as root: installs what is missing, then brings up a
# 3-node vxlan cluster of network namespaces (etcd started for you), pings every pod from every
# pod, shows `flannelctl subnets`, and leaves the lab running for you to explore
# (`netns-lab/lab status`, `netns-lab/lab exec ...`; tear down with `netns-lab/lab down`).
# `scripts/demo.sh --backend wireguard` (or host-gw, udp) builds it with another backend.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec netns-lab/lab demo "$@"
