"""Backend registry: backend classes found by their (lower-cased) type string.

Modules are imported lazily so that validating a network config (``flannelctl config set``)
does not pull in netlink or the udp datapath.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flanneld.errors import UnknownBackendError

if TYPE_CHECKING:
    from flanneld.backends.base import Backend

_REGISTRY: dict[str, str] = {
    "vxlan": "flanneld.backends.vxlan:VXLANBackend",
    "host-gw": "flanneld.backends.hostgw:HostGWBackend",
    "udp": "flanneld.backends.udp.backend:UDPBackend",
    "wireguard": "flanneld.backends.wireguard.backend:WireguardBackend",
}


def register_backend(type_name: str, target: str) -> None:
    """Add a backend as ``"package.module:Class"`` (out-of-tree backends, test doubles)."""
    _REGISTRY[type_name.lower()] = target


def known_types() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(type_name: str) -> type[Backend]:
    """The Backend class for a type string; UnknownBackendError lists the known ones."""
    target = _REGISTRY.get(type_name.lower())
    if target is None:
        raise UnknownBackendError(
            f"unknown backend type {type_name!r}; known types: {', '.join(known_types())}"
        )
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, attr)
    return cls
