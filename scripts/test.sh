#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, as root: installs what is missing
# (scripts/bootstrap.sh), lints (ruff, mypy), then runs every pytest tier.  Each tier starts
# what it needs itself (etcd on free loopback ports, namespaces it creates and deletes).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit` or `-m "not lab"`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy" >&2
# From a neutral directory: in the repository root the source folder flanneld/ would shadow the
# installed package, whose flanneld.backends and flanneld.cni are mapped from other folders.
(cd / && "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p flanneld)
echo "== pytest" >&2
exec .venv/bin/pytest "$@"
