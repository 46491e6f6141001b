"""Starting and stopping our flanneld on a lab node.

Each node runs ``.venv/bin/flanneld`` inside its namespace with Go flannel's flag names; the
subnet file lives in the node's state directory (nodes share the machine's filesystem).

wireguard nodes: wireguard-go serves its UAPI socket at ``/var/run/wireguard/<dev>.sock``
whatever the network namespace, so each node's flanneld (and the wireguard-go it starts) runs
in a mount namespace of its own where the node's ``wireguard/`` directory is bind-mounted over
``/var/run/wireguard`` (``private_wireguard``; ``wg_command`` looks at it the same way), and
its private key file is the node's own (``WIREGUARD_KEY_FILE``): nodes share /run/flannel.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from netnslab.proc import CommandError, ProcRef, alive, nsexec, signal_proc, spawn, wait_dead
from netnslab.state import VENV_BIN, LabState


def flanneld_command(lab: LabState, node: int, extra: Sequence[str] = ()) -> list[str]:
    """The node's flanneld command line: lab defaults, the lab's args, then ``extra``."""
    names = lab.names
    return [
        str(VENV_BIN / "flanneld"),
        "--etcd-endpoints", names.etcd_endpoint,
        "--subnet-file", str(lab.subnet_file(node)),
        "--iface", names.uplink,
        "--healthz-port", "0",
        *lab.flanneld_args,
        *extra,
    ]  # fmt: skip


def wireguard_dir(lab: LabState, node: int) -> Path:
    return lab.node_dir(node) / "wireguard"


def private_wireguard(directory: Path, cmd: Sequence[str]) -> list[str]:
    """``cmd`` in a new mount namespace where ``directory`` is /var/run/wireguard."""
    script = ('mkdir -p "$1" /var/run/wireguard && mount --bind "$1" /var/run/wireguard '
              '&& shift && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(directory), *cmd]


def wg_command(lab: LabState, node: int, args: Sequence[str]) -> list[str]:
    """``wg ARGS`` on a node: its namespace, its /var/run/wireguard."""
    return nsexec(lab.names.node_ns(node), private_wireguard(wireguard_dir(lab, node),
                                                            ["wg", *args]))


def pid_file(lab: LabState, node: int) -> Path:
    return lab.node_dir(node) / "flanneld.pid"


def log_file(lab: LabState, node: int) -> Path:
    return lab.node_dir(node) / "flanneld.log"


def running(lab: LabState, node: int) -> ProcRef | None:
    ref = ProcRef.load(pid_file(lab, node))
    return ref if ref is not None and alive(ref) else None


def start(lab: LabState, node: int, extra: Sequence[str] = (),
          env_extra: Mapping[str, str] | None = None) -> ProcRef:
    """Start the node's flanneld; ``env_extra`` is added to its environment (after the
    FLANNELD_* filter: e.g. NODE_NAME for a daemon in Kubernetes mode)."""
    if running(lab, node):
        raise CommandError(f"flanneld already running on n{node}")
    lab.node_dir(node).mkdir(parents=True, exist_ok=True)
    log = log_file(lab, node)
    with log.open("a") as f:
        f.write(f"--- lab: starting flanneld at {time.strftime('%H:%M:%S')}\n")
    # FLANNELD_* from the caller's environment would silently change every node's flags.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_extra or {})
    cmd = flanneld_command(lab, node, extra)
    if lab.backend == "wireguard":
        cmd = private_wireguard(wireguard_dir(lab, node), cmd)
        env["WIREGUARD_KEY_FILE"] = str(lab.node_dir(node) / "wgkey")
    ref = spawn(nsexec(lab.names.node_ns(node), cmd), log, env)
    pid_file(lab, node).write_text(ref.dump())
    return ref


def kill(lab: LabState, node: int, sig: int = signal.SIGKILL) -> bool:
    ref = ProcRef.load(pid_file(lab, node))
    if ref is None or not signal_proc(ref, sig):
        return False
    if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        wait_dead([ref], 10.0)
    return True


def log_tail(lab: LabState, node: int, lines: int = 15) -> str:
    try:
        text = log_file(lab, node).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_subnet_file(lab: LabState, node: int, ref: ProcRef, timeout: float, since: float) -> None:
    """Wait until the node's subnet.env is (re)written after ``since`` (a time.time())."""
    path = lab.subnet_file(node)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_mtime >= since and path.stat().st_size > 0:
                return
        except OSError:
            pass
        if not alive(ref):
            raise CommandError(
                f"flanneld on n{node} exited before writing {path}:\n{log_tail(lab, node)}"
            )
        time.sleep(0.05)
    raise CommandError(f"flanneld on n{node}: no {path} after {timeout}s:\n{log_tail(lab, node)}")
