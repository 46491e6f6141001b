"""The plugin's saved state: `<dataDir>/<containerID>` holds the delegate config bytes.

Why: DEL (and CHECK, GC) must use the config ADD used, even after subnet.env changed or vanished;
the format is the reference's (the file is exactly the delegate config it sent). Written 0600
in a 0700 directory, fsync'd (one fsync, as the reference), and - doing better than the
reference's in-place write - through a temporary name and a rename, so a crash never leaves a
half-written file under the container's name. Temporary names start
with "." which no container ID can (libcni: `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`).
"""

from __future__ import annotations

import posix

from flanneld.cni.subnetenv import read_file


def path_of(data_dir: str, container_id: str) -> str:
    return f"{data_dir.rstrip('/') or '/'}/{container_id}"


def _makedirs(path: str) -> None:
    """mkdir -p with mode 0700 for the directories it creates."""
    if not path or path == "/":
        return
    try:
        posix.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if parent in ("", path):
            raise
        _makedirs(parent)
        try:
            posix.mkdir(path, 0o700)
        except FileExistsError:
            return


def save(data_dir: str, container_id: str, data: bytes) -> None:
    _makedirs(data_dir)
    final = path_of(data_dir, container_id)
    tmp = path_of(data_dir, f".{container_id}.{posix.getpid()}.tmp")
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC, 0o600)
    try:
        posix.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
        posix.fsync(fd)
    except BaseException:
        posix.close(fd)
        posix.unlink(tmp)
        raise
    posix.close(fd)
    # No fsync of the directory after the rename: it costs another ~4 ms on this disk for
    # every pod, and the reference does not make the new name durable either (one fsync).
    posix.rename(tmp, final)


def load(data_dir: str, container_id: str) -> bytes | None:
    """The saved bytes, or None when there is no saved state for the container."""
    try:
        return read_file(path_of(data_dir, container_id))
    except FileNotFoundError:
        return None


def remove(data_dir: str, container_id: str) -> None:
    try:  # noqa: SIM105 - contextlib is an import the plugin's start-up does not need
        posix.unlink(path_of(data_dir, container_id))
    except FileNotFoundError:
        pass


def container_ids(data_dir: str) -> list[str]:
    """Containers with saved state (temporary files and anything else skipped)."""
    try:
        names = posix.listdir(data_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n[:1].isalnum() and n.isascii())
