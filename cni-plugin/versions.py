"""CNI spec versions: which we accept, how they order, and result conversion between them (pure).

Why: a runtime gets its result in the version its config asked for, while the delegates on
Debian (containernetworking-plugins 1.1.1) stop at 1.0.0. So a 1.1.0 config is delegated as
1.0.0 and the result converted up; CHECK's prevResult is converted down. Result shapes:
0.3.0/0.3.1/0.4.0 carry `ips[].version`; 1.0.0 removed it; 1.1.0 added interface `mtu`,
`socketPath`, `pciID` and route `mtu`, `advmss`, `priority`, `table`, `scope`.
Keys are emitted in libcni's struct order (cniVersion, interfaces, ips, routes, dns).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"


def key(version: str) -> tuple[int, ...]:
    """Sortable key; ValueError for something that is not a dotted version."""
    parts = version.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"invalid version {version!r}")
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts))


def at_least(version: str, minimum: str) -> bool:
    return key(version) >= key(minimum)


def highest_common(wanted: str, theirs: list[str]) -> str | None:
    """The highest version a delegate supports that is not above `wanted`."""
    best: str | None = None
    for version in theirs:
        try:
            if key(version) <= key(wanted) and (best is None or key(version) > key(best)):
                best = version
        except ValueError:
            continue
    return best


def _legacy(version: str) -> bool:
    return key(version) < (1, 0, 0)


_IFACE_FIELDS_1_0: tuple[str, ...] = ("name", "mac", "sandbox")
_IFACE_FIELDS_1_1: tuple[str, ...] = ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")
_ROUTE_FIELDS_1_0: tuple[str, ...] = ("dst", "gw")
_ROUTE_FIELDS_1_1: tuple[str, ...] = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")


def _pick(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: obj[f] for f in fields if f in obj}


def convert_result(result: dict[str, Any], to: str) -> dict[str, Any]:
    """`result` (any supported version, 0.3.0 .. 1.1.0) as a `to` result."""
    new = key(to) >= (1, 1, 0)
    out: dict[str, Any] = {"cniVersion": to}
    if isinstance(result.get("interfaces"), list):
        fields: tuple[str, ...] = _IFACE_FIELDS_1_1 if new else _IFACE_FIELDS_1_0
        out["interfaces"] = [
            _pick(i, fields) if isinstance(i, dict) else i for i in result["interfaces"]
        ]
    if isinstance(result.get("ips"), list):
        ips: list[Any] = []
        for ip in result["ips"]:
            if not isinstance(ip, dict):
                ips.append(ip)
                continue
            entry: dict[str, Any] = {}
            if _legacy(to):
                address = ip.get("address", "")
                entry["version"] = "6" if ":" in str(address) else "4"
            entry.update(_pick(ip, ("interface", "address", "gateway")))
            ips.append(entry)
        out["ips"] = ips
    if isinstance(result.get("routes"), list):
        fields = _ROUTE_FIELDS_1_1 if new else _ROUTE_FIELDS_1_0
        out["routes"] = [
            _pick(r, fields) if isinstance(r, dict) else r for r in result["routes"]
        ]
    if "dns" in result:
        out["dns"] = result["dns"]
    return out
