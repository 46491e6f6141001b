"""Run the `flannel` CNI plugin's ``main()`` in this process, as its executable would run.

Why: 10,000 fuzz cases through a fresh interpreter each would take minutes; in-process they
take milliseconds. The plugin reads its environment through ``posix.environ`` and its stdin and
stdout through fds 0/1 (no ``sys.stdin``/``os.environ``), so the harness swaps in a bytes
environment mapping for the call and points fds 0, 1 and 2 at memfds. An exception escaping
``main()`` is returned as ``crash`` (the real executable would print a traceback and exit 1).
``test_fuzz_cni`` checks on a sample that this matches the real executable byte for byte.
"""

from __future__ import annotations

import os
import posix
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

from flanneld.cni import main as cni_main


@dataclass(frozen=True)
class Outcome:
    rc: int
    stdout: bytes
    stderr: bytes
    crash: str | None = None  # traceback text of an exception that escaped main()


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run_plugin(env: Mapping[bytes, bytes], stdin: bytes) -> Outcome:
    """One plugin call with exactly ``env`` as its environment and ``stdin`` on fd 0."""
    fds = [_memfd("fz-stdin", stdin), _memfd("fz-stdout"), _memfd("fz-stderr")]
    saved = [os.dup(0), os.dup(1), os.dup(2)]
    saved_environ = posix.environ
    crash: str | None = None
    rc = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        posix.environ = dict(env)
        try:
            rc = cni_main.main()
        except Exception:  # what the executable would die of: recorded, judged by the caller
            crash = traceback.format_exc()
    finally:
        posix.environ = saved_environ
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)
    try:
        return Outcome(rc, _read_all(fds[1]), _read_all(fds[2]), crash)
    finally:
        for fd in fds:
            os.close(fd)
