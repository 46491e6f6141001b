"""Atomic file writes for files other programs read (subnet.env, docker options, CNI config).

Write to a temp file in the same directory, fsync, chmod, rename over the target, fsync the
directory: a reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, data: str | bytes, mode: int = 0o644, dir_mode: int = 0o755) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_writable_path(path: str, flag: str) -> None:
    """Fail early (ConfigError naming ``flag``) on paths that can never be written: a
    directory, or a parent that is not a directory.  A full or read-only file system is not
    refused here: that can change, and the daemon retries it."""
    from flanneld.errors import ConfigError

    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ConfigError(f"{flag} {path}: is a directory")
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: {parent} is not a directory")
