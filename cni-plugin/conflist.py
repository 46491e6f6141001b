"""The node's CNI config list, `10-flannel.conflist`, in kube-flannel's shape.

Why here: flanneld (behind a flag) writes the file the runtime reads to find this plugin; its
shape is kube-flannel's `cni-conf.json`: network cbr0, cniVersion 0.3.1, the flannel plugin with
delegate {hairpinMode, isDefaultGateway}, then portmap with the portMappings capability.
`render_conflist` is pure; `write_conflist` replaces the file atomically (0644) so a runtime
never reads half of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

DEFAULT_PATH = "/etc/cni/net.d/10-flannel.conflist"


def render_conflist(
    *,
    name: str = "cbr0",
    cni_version: str = "0.3.1",
    hairpin_mode: bool = True,
    is_default_gateway: bool = True,
    portmap: bool = True,
    subnet_file: str | None = None,
    data_dir: str | None = None,
) -> str:
    """The conflist text (2-space indent, trailing newline), kube-flannel's by default.

    `subnet_file` / `data_dir` are added to the flannel entry only when given (the plugin's
    defaults are /run/flannel/subnet.env and /var/lib/cni/flannel).
    """
    flannel: dict[str, object] = {"type": "flannel"}
    if subnet_file is not None:
        flannel["subnetFile"] = subnet_file
    if data_dir is not None:
        flannel["dataDir"] = data_dir
    flannel["delegate"] = {"hairpinMode": hairpin_mode, "isDefaultGateway": is_default_gateway}
    plugins: list[dict[str, object]] = [flannel]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    doc = {"name": name, "cniVersion": cni_version, "plugins": plugins}
    return json.dumps(doc, indent=2) + "\n"


def write_conflist(path: str = DEFAULT_PATH, **options: Any) -> bool:
    """Write the conflist atomically with mode 0644; False when it was already identical."""
    text = render_conflist(**options)
    try:
        with open(path, encoding="utf-8") as current:
            if current.read() == text and os.stat(path).st_mode & 0o777 == 0o644:
                return False
    except OSError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".10-flannel.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True
