"""Find a delegate plugin in CNI_PATH and run it as a runtime would, negotiating the version.

Why: libcni's invoke package does this for the reference; here it is on `posix.posix_spawn`
(no `subprocess`, whose import costs more than the whole ADD's own work). The config goes in
through a memfd (any size, no deadlock), stdout comes back through a pipe, stderr is inherited
so the delegate's logs reach the runtime. A delegate that answers error 1 (incompatible version)
is asked for VERSION (cached per process) and called again with the highest version it supports
below the one asked for; callers convert its result back.
"""

from __future__ import annotations

import posix

from flanneld.cni import gojson, versions
from flanneld.cni.errors import DELEGATE_UNAVAILABLE, INCOMPATIBLE_VERSION, INTERNAL, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_version_cache: dict[str, list[str]] = {}


def find_in_path(plugin: str, cni_path: str) -> str:
    """libcni's invoke.FindInPath: first `<dir>/<plugin>` that exists and is not a directory."""
    if not plugin:
        raise CniError(DELEGATE_UNAVAILABLE, "no plugin name provided")
    if "/" in plugin:
        raise CniError(DELEGATE_UNAVAILABLE, f"invalid plugin name: {plugin}")
    dirs = [d for d in cni_path.split(":") if d]
    for directory in dirs:
        candidate = f"{directory}/{plugin}"
        try:
            if posix.stat(candidate).st_mode & _S_IFMT != _S_IFDIR:
                return candidate
        except (OSError, ValueError):  # ValueError: a NUL byte (Go's stat: EINVAL, not found)
            continue
    raise CniError(
        DELEGATE_UNAVAILABLE, f'failed to find plugin "{plugin}" in path [{" ".join(dirs)}]'
    )


def run(path: str, env: dict[bytes, bytes], stdin: bytes) -> tuple[int, bytes]:
    """Run one plugin: (exit code, stdout)."""
    mem = posix.memfd_create("fcni-stdin", posix.MFD_CLOEXEC)
    try:
        view = memoryview(stdin)
        while view:
            view = view[posix.write(mem, view):]
        posix.lseek(mem, 0, 0)  # SEEK_SET
        read_end, write_end = posix.pipe()
        try:
            pid = posix.posix_spawn(
                path,
                [path],
                env,
                file_actions=[
                    (posix.POSIX_SPAWN_DUP2, mem, 0),
                    (posix.POSIX_SPAWN_DUP2, write_end, 1),
                ],
            )
        except OSError as exc:
            posix.close(read_end)
            raise CniError(DELEGATE_UNAVAILABLE, f"fork/exec {path}: {exc.strerror}") from None
        finally:
            posix.close(write_end)
    finally:
        posix.close(mem)
    try:
        chunks: list[bytes] = []
        while chunk := posix.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        posix.close(read_end)
    _, status = posix.waitpid(pid, 0)
    return posix.waitstatus_to_exitcode(status), b"".join(chunks)


def plugin_env(
    command: str, overrides: dict[str, str | None] | None = None
) -> dict[bytes, bytes]:
    """Our environment with CNI_COMMAND set, as libcni's ArgsFromEnv; None unsets a variable."""
    env = dict(posix.environ)
    env[b"CNI_COMMAND"] = command.encode()
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name.encode(), None)
        else:
            env[name.encode()] = value.encode("utf-8", "surrogateescape")
    return env


def error_from(output: bytes, rc: int, plugin: str) -> CniError:
    """The delegate's error JSON as a CniError (its code kept), or a generic one."""
    try:
        doc = gojson.loads(output)
    except gojson.DecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("code"), int):
        return CniError(doc["code"], str(doc.get("msg", "")), str(doc.get("details") or ""))
    text = output.decode("utf-8", "replace").strip()
    return CniError(INTERNAL, f"netplugin {plugin} failed (exit {rc}): {text!r}")


def supported_versions(path: str) -> list[str]:
    """Ask the plugin VERSION once per process."""
    cached = _version_cache.get(path)
    if cached is not None:
        return cached
    rc, out = run(path, plugin_env("VERSION"), b'{"cniVersion":"' + versions.CURRENT.encode() + b'"}')
    found: list[str] = []
    if rc == 0:
        try:
            doc = gojson.loads(out)
        except gojson.DecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("supportedVersions"), list):
            found = [v for v in doc["supportedVersions"] if isinstance(v, str)]
    _version_cache[path] = found
    return found


class Delegate:
    """One delegate plugin binary and the version it was last called with."""

    def __init__(self, plugin: str, cni_path: str) -> None:
        self.plugin = plugin
        self.path = find_in_path(plugin, cni_path)

    def call(
        self,
        command: str,
        conf: dict[str, Any],
        wire: bytes | None = None,
        overrides: dict[str, str | None] | None = None,
    ) -> tuple[str, bytes]:
        """Run `command` with `conf` (sent as `wire` when given, e.g. the saved bytes).

        Returns (the cniVersion the delegate was called with, its stdout). Raises the
        delegate's error; error 1 triggers one retry at the highest version it supports.
        """
        wanted = conf.get("cniVersion")
        body = wire if wire is not None else gojson.marshal(conf)
        env = plugin_env(command, overrides)
        rc, out = run(self.path, env, body)
        if rc == 0:
            return str(wanted or ""), out
        err = error_from(out, rc, self.plugin)
        if err.code != INCOMPATIBLE_VERSION or not isinstance(wanted, str):
            raise err
        theirs = supported_versions(self.path)
        lower = versions.highest_common(wanted, theirs) if wanted in versions.SUPPORTED else None
        if lower is None or lower == wanted:
            raise err
        if command == "CHECK" and not versions.at_least(lower, "0.4.0"):
            raise err
        retry = dict(conf, cniVersion=lower)
        prev = retry.get("prevResult")
        if isinstance(prev, dict):
            retry["prevResult"] = versions.convert_result(prev, lower)
        rc, out = run(self.path, env, gojson.marshal(retry))
        if rc != 0:
            raise error_from(out, rc, self.plugin)
        return lower, out
