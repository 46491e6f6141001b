"""CHECK, really: compare the pod's interface, addresses, routes and MTU with prevResult.

Why: the reference flannel plugin's cmdCheck is `// TODO: implement` and returns success.
The pod side is read with `nsenter --net=<CNI_NETNS> ip -j ...` (JSON from iproute2) rather
than pyroute2, whose import alone costs ~0.7 s; `json` is imported here lazily, CHECK is not
the hot path. `mismatches` is pure so its rules are unit-tested without a namespace.
"""

from __future__ import annotations

import posix

from flanneld.cni import cidr
from flanneld.cni.errors import CHECK_MISMATCH, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_TOOL_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


class PodView:
    """What `ip -j` shows inside the pod: the link (None if absent) and its routes."""

    def __init__(self, link: dict[str, Any] | None, routes: list[dict[str, Any]]) -> None:
        self.link = link
        self.routes = routes


def _tool(name: str) -> str:
    path = posix.environ.get(b"PATH", b"").decode("utf-8", "replace")
    for directory in [*path.split(":"), *_TOOL_DIRS]:
        if directory and posix.access(f"{directory}/{name}", posix.X_OK):
            return f"{directory}/{name}"
    raise CniError(CHECK_MISMATCH, f"CHECK needs {name}, not found in PATH")


def _ip_json(netns: str, args: list[str]) -> Any:
    import json

    nsenter = _tool("nsenter")
    env = {b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin", b"LC_ALL": b"C"}
    argv = [nsenter, f"--net={netns}", _tool("ip"), "-j", *args]
    read_end, write_end = posix.pipe()
    devnull = posix.open("/dev/null", posix.O_RDWR)
    try:
        pid = posix.posix_spawn(
            nsenter,
            argv,
            env,
            file_actions=[
                (posix.POSIX_SPAWN_DUP2, devnull, 0),
                (posix.POSIX_SPAWN_DUP2, write_end, 1),
                (posix.POSIX_SPAWN_DUP2, devnull, 2),
            ],
        )
    finally:
        posix.close(write_end)
        posix.close(devnull)
    chunks: list[bytes] = []
    try:
        while chunk := posix.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        posix.close(read_end)
    _, status = posix.waitpid(pid, 0)
    if posix.waitstatus_to_exitcode(status) != 0:
        return None
    return json.loads(b"".join(chunks) or b"[]")


def inspect(netns: str, ifname: str, families: set[int]) -> PodView:
    links = _ip_json(netns, ["addr", "show", "dev", ifname])
    if links is None:
        try:
            posix.stat(netns)
        except OSError:
            raise CniError(CHECK_MISMATCH, f"pod network namespace {netns} is gone") from None
    link = links[0] if links else None
    routes: list[dict[str, Any]] = []
    for family in sorted(families):
        found = _ip_json(netns, [f"-{family}", "route", "show", "table", "main"])
        routes += found or []
    return PodView(link, routes)


def _route_dst(text: str, family: int) -> str:
    if text == "default":
        return "0.0.0.0/0" if family == 4 else "::/0"
    if "/" not in text:
        text += "/32" if family == 4 else "/128"
    return cidr.network(text)


def pod_ips(prev: dict[str, Any], ifname: str, netns: str) -> list[str]:
    """prevResult addresses that belong on the pod's interface."""
    interfaces = prev.get("interfaces") or []
    out: list[str] = []
    for ip in prev.get("ips") or []:
        index = ip.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        out.append(ip["address"])
    return out


def mismatches(
    view: PodView, prev: dict[str, Any], ifname: str, netns: str, mtu: int | None
) -> list[str]:
    """Everything in prevResult (and the delegate's MTU) the pod does not have."""
    problems: list[str] = []
    if view.link is None:
        return [f"interface {ifname} not found in {netns}"]
    for iface in prev.get("interfaces") or []:
        if iface.get("name") == ifname and iface.get("sandbox"):
            mac = iface.get("mac")
            if mac and str(view.link.get("address", "")).lower() != str(mac).lower():
                problems.append(f"{ifname} has MAC {view.link.get('address')}, expected {mac}")
    if mtu is not None and view.link.get("mtu") != mtu:
        problems.append(f"{ifname} has MTU {view.link.get('mtu')}, expected {mtu}")
    have = {
        f"{cidr.canonical_ip(a['local'])}/{a['prefixlen']}"
        for a in view.link.get("addr_info", [])
        if "local" in a and "prefixlen" in a
    }
    for address in pod_ips(prev, ifname, netns):
        family, packed, plen = cidr.parse_cidr(address)
        if f"{cidr.format_ip(family, packed)}/{plen}" not in have:
            problems.append(f"address {address} missing on {ifname}")
    table: list[tuple[str, str | None]] = []
    for r in view.routes:
        if r.get("dev") not in (None, ifname) or "dst" not in r:
            continue
        family = 6 if ":" in r["dst"] or ":" in str(r.get("gateway", "")) else 4
        gw = r.get("gateway")
        table.append((_route_dst(r["dst"], family), cidr.canonical_ip(gw) if gw else None))
    for route in prev.get("routes") or []:
        dst = route.get("dst")
        if not isinstance(dst, str):
            continue
        family = 6 if ":" in dst else 4
        want = _route_dst(dst, family)
        gw = route.get("gw")
        want_gw = cidr.canonical_ip(gw) if gw else None
        if not any(d == want and (want_gw is None or g == want_gw) for d, g in table):
            via = f" via {gw}" if gw else ""
            problems.append(f"route {dst}{via} missing in {netns}")
    return problems


def with_route_gateways(prev: dict[str, Any]) -> dict[str, Any]:
    """prevResult with each gateway-less route given the gateway the delegate installed it via.

    Why: bridge's ADD installs a route without `gw` via the address's gateway (ipam's
    ConfigureIface), but its CHECK (ip.ValidateExpectedRoute, plugins <= 1.1.1 at least) then
    looks for a route with *no* gateway and fails on every flannel pod. Handing it the route as
    installed lets the delegate's own CHECK run.
    """
    gateways: dict[int, str] = {}
    for ip in prev.get("ips") or []:
        gw = ip.get("gateway")
        if isinstance(gw, str) and gw:
            gateways.setdefault(6 if ":" in gw else 4, gw)
    routes = []
    for route in prev.get("routes") or []:
        dst = route.get("dst") if isinstance(route, dict) else None
        if isinstance(dst, str) and not route.get("gw"):
            gw = gateways.get(6 if ":" in dst else 4)
            if gw:
                route = {**route, "gw": gw}
        routes.append(route)
    return {**prev, "routes": routes} if "routes" in prev else prev


def check_pod(prev: dict[str, Any], ifname: str, netns: str, mtu: int | None) -> None:
    families = {6 if ":" in str(ip.get("address", "")) else 4 for ip in prev.get("ips") or []}
    families |= {6 if ":" in str(r.get("dst", "")) else 4 for r in prev.get("routes") or []}
    view = inspect(netns, ifname, families or {4})
    problems = mismatches(view, prev, ifname, netns, mtu)
    if problems:
        raise CniError(CHECK_MISMATCH, "pod network does not match the result", "; ".join(problems))
