"""Render the delegate config exactly as the reference flannel plugin does (pure).

Why: the bytes of this config are the plugin's saved state (`<dataDir>/<containerID>`), which
the reference replays at DEL; a node switching between the Go plugin and this one must find the
same bytes. The reference (flannel-io/cni-plugin, libcni 1.2.3) takes the netconf's `delegate`
map and fills in, only where the key is absent: type "bridge", ipMasq = !FLANNEL_IPMASQ,
mtu = FLANNEL_MTU, isGateway true (bridge only); it always sets name, copies cniVersion when
non-empty, copies runtimeConfig, and builds `ipam` from the netconf's ipam map (type default
host-local) with `ranges` = the node subnet(s) and `routes` = the netconf's ipam routes (re-encoded
as Go `types.Route`) followed by the flannel network(s). Then `json.Marshal`: keys sorted.
"""

from __future__ import annotations

from flanneld.cni import cidr, gojson
from flanneld.cni.errors import INVALID_NETCONF, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from flanneld.cni.netconf import NetConf
    from flanneld.cni.subnetenv import SubnetEnv

_ROUTE_INTS = {"mtu": "mtu", "advmss": "advmss", "priority": "priority"}
_ROUTE_PTR_INTS = {"table": "table", "scope": "scope"}


def _bad(msg: str) -> CniError:
    return CniError(INVALID_NETCONF, msg)


def _go_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, float | int) or value != int(value):
        raise _bad(f"failed to parse ipam.routes: json: cannot unmarshal {value!r} into "
                   f"Go struct field route.{name} of type int")
    return int(value)


def route(obj: Any) -> gojson.GoStruct:
    """One ipam route re-encoded as libcni's types.Route (dst, gw, mtu, advmss, ...)."""
    if not isinstance(obj, dict):
        raise _bad("failed to parse ipam.routes: each route must be an object")
    dst: str | None = None
    gw: str | None = None
    ints: dict[str, int] = {}
    ptrs: dict[str, int] = {}
    for key, value in obj.items():
        name = key.lower()
        if value is None:
            continue
        try:
            if name == "dst":
                if not isinstance(value, str):
                    raise _bad("failed to parse ipam.routes: dst must be a string")
                dst = cidr.canonical(value)
            elif name == "gw":
                if not isinstance(value, str):
                    raise _bad("failed to parse ipam.routes: gw must be a string")
                gw = cidr.canonical_ip(value) if value else None
            elif name in _ROUTE_INTS:
                ints[name] = _go_int(name, value)
            elif name in _ROUTE_PTR_INTS:
                ptrs[name] = _go_int(name, value)
        except cidr.CidrError as exc:
            raise _bad(f"failed to parse ipam.routes: {exc}") from None
    if dst is None:
        raise _bad("failed to parse ipam.routes: a route has no dst")
    out = gojson.GoStruct(dst=dst)
    if gw:
        out["gw"] = gw
    for name in ("mtu", "advmss", "priority"):
        if ints.get(name):
            out[name] = ints[name]
    for name in ("table", "scope"):
        if name in ptrs:
            out[name] = ptrs[name]
    return out


def validate_delegate(delegate: dict[str, Any] | None) -> None:
    """The reference's cmdAdd checks on the netconf's `delegate` map."""
    if delegate is None:
        return
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise _bad("'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in delegate:
        raise _bad("'delegate' dictionary must not have 'name' field, it'll be set by flannel")
    if "ipam" in delegate:
        raise _bad("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")


def delegate_config(conf: NetConf, env: SubnetEnv) -> dict[str, Any]:
    """The delegate's network config as a map (encode with `gojson.marshal`)."""
    validate_delegate(conf.delegate)
    delegate: dict[str, Any] = dict(conf.delegate) if conf.delegate is not None else {}
    if conf.runtime_config is not None:
        delegate["runtimeConfig"] = conf.runtime_config
    delegate["name"] = conf.name
    delegate.setdefault("type", "bridge")
    if "ipMasq" not in delegate:
        delegate["ipMasq"] = not env.ipmasq
    if "mtu" not in delegate:
        delegate["mtu"] = env.mtu
    if delegate["type"] == "bridge" and "isGateway" not in delegate:
        delegate["isGateway"] = True
    if conf.cni_version:
        delegate["cniVersion"] = conf.cni_version

    ipam: dict[str, Any] = dict(conf.ipam) if conf.ipam is not None else {}
    ipam.setdefault("type", "host-local")
    ranges: list[list[dict[str, str]]] = []
    if env.subnet is not None:
        ranges.append([{"subnet": env.subnet}])
    if env.ip6_subnet is not None:
        ranges.append([{"subnet": env.ip6_subnet}])
    ipam["ranges"] = ranges
    routes: list[gojson.GoStruct] = []
    if "routes" in ipam and ipam["routes"] is not None:
        if not isinstance(ipam["routes"], list):
            raise _bad("failed to parse ipam.routes: routes must be a list")
        routes = [route(r) for r in ipam["routes"]]
    routes += [gojson.GoStruct(dst=net) for net in env.networks]
    routes += [gojson.GoStruct(dst=net) for net in env.ip6_networks]
    ipam["routes"] = routes
    delegate["ipam"] = ipam
    return delegate


def delegate_bytes(conf: NetConf, env: SubnetEnv) -> bytes:
    """What the reference saves to `<dataDir>/<containerID>` and sends to the delegate."""
    return gojson.marshal(delegate_config(conf, env))
