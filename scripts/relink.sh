#!/usr/bin/env bash
# Refresh the strict editable install's link tree after adding or removing a module file.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
exec 9>.venv/.relink.lock
flock 9
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    --config-settings editable_mode=strict 2>&1 | grep -v '^WARNING: Location' >&2 || true
