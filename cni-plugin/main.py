"""The `flannel` CNI plugin's entry point: env + stdin in, result or error JSON out.

Why this shape: one process per call, so start-up dominates. This module imports only what
ADD uses (posix, _json/_socket through small modules); CHECK's pod inspection and the conflist
writer are elsewhere. The checks run in libcni skel's order (env -> stdin -> name -> container
ID -> interface name -> version -> command) so errors match what runtimes see from Go plugins.
"""

from __future__ import annotations

import posix

from flanneld.cni import errors, gojson, invoke, netconf, render, state, subnetenv, versions
from flanneld.cni.errors import CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ABOUT = "CNI flannel plugin (flanneld-py)"
_ENV_ORDER = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
_REQUIRED = {
    "ADD": {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"},
    "CHECK": {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"},
    "DEL": {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"},
    "GC": {"CNI_PATH"},
    "STATUS": set(),
    "VERSION": set(),
}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
GC_DEFAULT_IFNAME = "eth0"  # kubelet's; GC's stale attachments come without an ifname


def _env(name: str) -> str:
    return posix.environ.get(name.encode(), b"").decode("utf-8", "surrogateescape")


def log(msg: str) -> None:
    _write(2, f"flannel: {msg}\n".encode("utf-8", "replace"))


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def _read_stdin() -> bytes:
    chunks: list[bytes] = []
    try:
        while chunk := posix.read(0, 65536):
            chunks.append(chunk)
    except OSError as exc:
        raise CniError(errors.IO_FAILURE, f"error reading from stdin: {exc.strerror}") from None
    return b"".join(chunks)


def _valid_name(text: str) -> bool:
    return bool(text) and text[0] in _NAME_CHARS and text[0] not in "_.-" and all(
        c in _NAME_CHARS for c in text
    )


def validate_ifname(ifname: str) -> None:
    """libcni's ValidateInterfaceName."""
    if len(ifname.encode("utf-8", "surrogateescape")) > 15:
        raise CniError(errors.INVALID_ENV, "interface name is too long",
                       "interface name should be less than 16 characters")
    if ifname in (".", ".."):
        raise CniError(errors.INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CniError(errors.INVALID_ENV,
                       "interface name contains / or : or whitespace characters")


def check_env(command: str) -> None:
    if command not in _REQUIRED:
        if not command:
            log(f"{ABOUT}\nCNI protocol versions supported: {', '.join(versions.SUPPORTED)}")
            raise CniError(errors.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
        raise CniError(errors.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [n for n in _ENV_ORDER if n in _REQUIRED[command] and not _env(n)]
    if missing:
        raise CniError(
            errors.INVALID_ENV, f"required env variables [{','.join(missing)}] missing"
        )


def _load_conf(stdin: bytes, command: str) -> netconf.NetConf:
    doc = netconf.decode(stdin)
    name = netconf.field(doc, "name")
    if not isinstance(name, str | None):
        raise CniError(errors.DECODE_FAILURE, "error unmarshall network config: json: cannot "
                       "unmarshal into Go struct field .name of type string")
    if not name:
        raise CniError(errors.INVALID_NETCONF, "missing network name")
    if not _valid_name(name):
        raise CniError(errors.INVALID_NETCONF, "invalid characters found in network name", name)
    if command in ("ADD", "DEL", "CHECK"):
        cid = _env("CNI_CONTAINERID")
        if not _valid_name(cid):
            raise CniError(errors.INVALID_ENV, "invalid characters in containerID", cid)
        validate_ifname(_env("CNI_IFNAME"))
    version = netconf.config_version(doc)
    if version not in versions.SUPPORTED:
        raise CniError(
            errors.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(versions.SUPPORTED)}',
        )
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and not versions.at_least(version, minimum):
        raise CniError(errors.INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    return netconf.parse(doc)


def _subnet_env(
    conf: netconf.NetConf, unavailable_code: int, bad_code: int
) -> subnetenv.SubnetEnv:
    """subnet.env, or the CniError: `unavailable_code` while it is absent or incomplete,
    `bad_code` when a value does not parse (msg as the reference's cmdAdd wraps it)."""
    try:
        return subnetenv.load(conf.subnet_file)
    except subnetenv.SubnetEnvError as exc:
        code = unavailable_code if exc.incomplete else bad_code
        raise CniError(code, f"loadFlannelSubnetEnv failed: {exc}", exc.details) from None


def _ints(value: Any) -> Any:
    """Go-decoded floats back to ints where integral (prevResult indexes, MTUs)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def _saved(conf: netconf.NetConf, cid: str) -> tuple[bytes, dict[str, Any]] | None:
    """Saved delegate config (bytes, decoded) or None; unreadable garbage is dropped."""
    try:
        raw = state.load(conf.data_dir, cid)
    except OSError as exc:
        raise CniError(errors.IO_FAILURE, f"reading saved state of {cid}: {exc.strerror}") from None
    if raw is None:
        return None
    try:
        doc = gojson.loads(raw, go_numbers=True)
    except gojson.DecodeError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        log(f"saved state of {cid} is not a delegate config; dropping it")
        state.remove(conf.data_dir, cid)
        return None
    return raw, doc


def cmd_add(conf: netconf.NetConf) -> bytes:
    cid = _env("CNI_CONTAINERID")
    # A value that does not parse: this plugin's code 100 (docs/cni.md); the reference's is 999,
    # libcni's skel code for any plain error, with the same msg.
    env = _subnet_env(conf, errors.TRY_AGAIN_LATER, errors.BAD_SUBNET_FILE)
    delegate_conf = render.delegate_config(conf, env)
    wire = gojson.marshal(delegate_conf)
    delegate = invoke.Delegate(delegate_conf["type"], _env("CNI_PATH"))
    try:
        state.save(conf.data_dir, cid, wire)
    except OSError as exc:
        raise CniError(errors.IO_FAILURE, f"saving delegate config for {cid}: {exc}") from None
    try:
        used, out = delegate.call("ADD", delegate_conf, wire)
        result = gojson.loads(out)
        if not isinstance(result, dict):
            raise gojson.DecodeError("not an object")
    except (CniError, gojson.DecodeError) as exc:
        err = exc if isinstance(exc, CniError) else CniError(
            errors.DELEGATE_UNAVAILABLE, f"delegate {delegate.plugin} returned no result: {exc}"
        )
        _undo_add(delegate, delegate_conf, wire, conf, cid)
        raise err from None
    if used == conf.cni_version:
        return out
    return gojson.to_bytes(gojson.dumps(versions.convert_result(result, conf.cni_version)))


def _undo_add(
    delegate: invoke.Delegate, delegate_conf: dict[str, Any], wire: bytes,
    conf: netconf.NetConf, cid: str,
) -> None:
    """A failed delegate ADD is DEL'd; the state goes only once that DEL succeeded."""
    try:
        delegate.call("DEL", delegate_conf, wire)
    except CniError as exc:
        log(f"cleanup DEL of {cid} after failed ADD failed too, state kept: {exc}")
        return
    state.remove(conf.data_dir, cid)


def cmd_del(conf: netconf.NetConf) -> bytes:
    cid = _env("CNI_CONTAINERID")
    saved = _saved(conf, cid)
    if saved is None:
        return b""
    raw, doc = saved
    delegate = invoke.Delegate(doc["type"], _env("CNI_PATH"))
    delegate.call("DEL", doc, raw)  # on failure the state stays for the retry
    state.remove(conf.data_dir, cid)
    return b""


def cmd_check(conf: netconf.NetConf) -> bytes:
    from flanneld.cni import check

    cid = _env("CNI_CONTAINERID")
    if conf.prev_result is None:
        raise CniError(errors.INVALID_NETCONF, "required prevResult missing")
    saved = _saved(conf, cid)
    if saved is None:
        raise CniError(errors.UNKNOWN_CONTAINER, f"no saved state for container {cid}")
    _, doc = saved
    prev = _ints(conf.prev_result)
    mtu = doc.get("mtu")
    check.check_pod(
        prev, _env("CNI_IFNAME"), _env("CNI_NETNS"),
        int(mtu) if isinstance(mtu, float | int) and not isinstance(mtu, bool) else None,
    )
    delegate_conf = dict(doc)
    delegate_conf["cniVersion"] = conf.cni_version
    delegate_conf["prevResult"] = check.with_route_gateways(
        versions.convert_result(prev, conf.cni_version)
    )
    invoke.Delegate(doc["type"], _env("CNI_PATH")).call("CHECK", delegate_conf)
    return b""


def _supports_1_1(delegate: invoke.Delegate) -> bool:
    return any(
        v in versions.SUPPORTED and versions.at_least(v, "1.1.0")
        for v in invoke.supported_versions(delegate.path)
    )


def cmd_gc(conf: netconf.NetConf) -> bytes:
    attachments = conf.valid_attachments or []
    valid: set[str] = set()
    for item in attachments:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise CniError(errors.INVALID_NETCONF, "cni.dev/valid-attachments: bad entry")
        valid.add(item["containerID"])
    ifname = _env("CNI_IFNAME") or GC_DEFAULT_IFNAME
    failures: list[CniError] = []
    for cid in state.container_ids(conf.data_dir):
        if cid in valid:
            continue
        saved = _saved(conf, cid)
        if saved is None:
            continue
        raw, doc = saved
        try:
            invoke.Delegate(doc["type"], _env("CNI_PATH")).call(
                "DEL", doc, raw,
                overrides={"CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": None},
            )
        except CniError as exc:
            log(f"GC: DEL of stale container {cid} failed, state kept: {exc}")
            failures.append(exc)
            continue
        state.remove(conf.data_dir, cid)
        log(f"GC: released stale container {cid}")
    try:
        env = subnetenv.load(conf.subnet_file)
    except subnetenv.SubnetEnvError as exc:
        where = f"; {exc.details}" if exc.details else ""
        log(f"GC: not forwarded to the delegate ({exc}{where})")
    else:
        delegate_conf = render.delegate_config(conf, env)
        delegate_conf["cni.dev/valid-attachments"] = attachments
        delegate = invoke.Delegate(delegate_conf["type"], _env("CNI_PATH"))
        if _supports_1_1(delegate):
            delegate.call("GC", delegate_conf)
        else:
            log(f"GC: delegate {delegate.plugin} predates CNI 1.1, GC not forwarded")
    if failures:
        raise failures[0]
    return b""


def cmd_status(conf: netconf.NetConf) -> bytes:
    env = _subnet_env(conf, errors.STATUS_NOT_AVAILABLE, errors.BAD_SUBNET_FILE)
    if not _env("CNI_PATH"):
        return b""
    delegate_conf = render.delegate_config(conf, env)
    delegate = invoke.Delegate(delegate_conf["type"], _env("CNI_PATH"))
    if _supports_1_1(delegate):
        delegate.call("STATUS", delegate_conf)
    return b""


def version_info() -> bytes:
    return gojson.dumps(
        {"cniVersion": versions.CURRENT, "supportedVersions": list(versions.SUPPORTED)}
    ).encode()


_COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc,
             "STATUS": cmd_status}


def run(command: str) -> tuple[bytes, CniError | None, str]:
    """(stdout payload, error, cniVersion for the error JSON)."""
    version = versions.CURRENT
    try:
        check_env(command)
        if command == "VERSION":
            return version_info(), None, version
        stdin = _read_stdin()
        conf = _load_conf(stdin, command)
        version = conf.cni_version
        return _COMMANDS[command](conf), None, version
    except CniError as exc:
        return b"", exc, version


def error_json(err: CniError, version: str) -> bytes:
    doc: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        doc["details"] = err.details
    return gojson.to_bytes(gojson.dumps(doc))


def main() -> int:
    command = _env("CNI_COMMAND")
    try:
        out, err, version = run(command)
    except Exception as exc:  # the spec wants JSON on stdout even for our own bugs
        out, err, version = b"", CniError(errors.INTERNAL, f"{type(exc).__name__}: {exc}"), "1.1.0"
    if err is not None:
        log(f"{command or '-'} {_env('CNI_CONTAINERID') or '-'}: error {err.code}: {err}")
        _write(1, error_json(err, version))
        return 1
    if out:
        _write(1, out)
    return 0
