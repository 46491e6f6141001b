"""The flannel plugin's network config, decoded with the reference plugin's (Go) rules.

Why: the reference decodes stdin into a Go struct, so field names match case-insensitively,
`null` leaves a field at its default, and a value of the wrong JSON type is an error. Defaults:
subnetFile /run/flannel/subnet.env, dataDir /var/lib/cni/flannel. The raw document is kept
(decoded Go-style, numbers as float64) because the delegate config is built from its maps.
"""

from __future__ import annotations

from flanneld.cni import gojson
from flanneld.cni.errors import DECODE_FAILURE, INVALID_NETCONF, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

# Go struct fields (json tag, lower-cased for Go's case-insensitive match) -> expected kind.
# lower-cased JSON key -> (Go struct tag, JSON kind, NetConf attribute or "" when only checked)
_FIELDS: dict[str, tuple[str, str, str]] = {
    "cniversion": ("cniVersion", "string", "cni_version"),
    "name": ("name", "string", "name"),
    "type": ("type", "string", "type"),
    "subnetfile": ("subnetFile", "string", "subnet_file"),
    "datadir": ("dataDir", "string", "data_dir"),
    "delegate": ("delegate", "object", "delegate"),
    "ipam": ("ipam", "object", "ipam"),
    "runtimeconfig": ("runtimeConfig", "object", "runtime_config"),
    "prevresult": ("prevResult", "object", "prev_result"),
    "capabilities": ("capabilities", "bools", ""),
    "dns": ("dns", "dns", ""),
    "cni.dev/valid-attachments": ("cni.dev/valid-attachments", "array", "valid_attachments"),
}
_JSON_KIND = {str: "string", dict: "object", list: "array", float: "number", bool: "bool"}


class NetConf:
    """The fields the plugin uses; `raw` is the whole decoded document."""

    __slots__ = (
        "cni_version",
        "data_dir",
        "delegate",
        "ipam",
        "name",
        "prev_result",
        "raw",
        "runtime_config",
        "subnet_file",
        "type",
        "valid_attachments",
    )

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.cni_version = ""
        self.name = ""
        self.type = ""
        self.subnet_file = DEFAULT_SUBNET_FILE
        self.data_dir = DEFAULT_DATA_DIR
        self.delegate: dict[str, Any] | None = None
        self.ipam: dict[str, Any] | None = None
        self.runtime_config: dict[str, Any] | None = None
        self.prev_result: dict[str, Any] | None = None
        self.valid_attachments: list[Any] | None = None


def decode(stdin: bytes) -> dict[str, Any]:
    """stdin -> JSON object (Go numbers), or error 6 as libcni's skel reports it."""
    try:
        doc = gojson.loads(stdin, go_numbers=True)
    except gojson.DecodeError as exc:
        raise CniError(DECODE_FAILURE, f"error unmarshall network config: {exc}") from None
    if not isinstance(doc, dict):
        raise CniError(
            DECODE_FAILURE,
            "error unmarshall network config: json: cannot unmarshal "
            f"{_kind(doc)} into Go value of type struct",
        )
    return doc


def _kind(value: Any) -> str:
    return "null" if value is None else _JSON_KIND.get(type(value), type(value).__name__)


def field(doc: dict[str, Any], tag: str) -> Any:
    """A top-level field as Go finds it: exact or case-insensitive key, last one wins."""
    want = tag.lower()
    found: Any = None
    for key, value in doc.items():
        if key.lower() == want and value is not None:
            found = value
    return found


def _check_kind(tag: str, kind: str, value: Any) -> None:
    ok: bool
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "object":
        ok = isinstance(value, dict)
    elif kind == "array":
        ok = isinstance(value, list)
    elif kind == "bools":
        ok = isinstance(value, dict) and all(
            isinstance(v, bool) or v is None for v in value.values()
        )
    else:  # dns: {nameservers: [str], domain: str, search: [str], options: [str]}
        ok = isinstance(value, dict) and all(
            v is None
            or (k.lower() == "domain" and isinstance(v, str))
            or (
                k.lower() in ("nameservers", "search", "options")
                and isinstance(v, list)
                and all(isinstance(s, str) or s is None for s in v)
            )
            or k.lower() not in ("domain", "nameservers", "search", "options")
            for k, v in value.items()
        )
    if not ok:
        raise CniError(
            INVALID_NETCONF,
            f"failed to load netconf: json: cannot unmarshal {_kind(value)} "
            f'into Go struct field NetConf.{tag}',
        )


def parse(doc: dict[str, Any]) -> NetConf:
    """Typed view of the document; wrong JSON types are error 7 (invalid network config)."""
    conf = NetConf(doc)
    for key, value in doc.items():
        spec = _FIELDS.get(key.lower())
        if spec is None or value is None:
            continue
        tag, kind, attr = spec
        _check_kind(tag, kind, value)
        if attr:
            setattr(conf, attr, value)
    # In Go an explicit "" overrides the default and the reference would then read or write
    # relative to its working directory: refuse that instead.
    if conf.data_dir == "":
        raise CniError(INVALID_NETCONF, "dataDir must not be empty")
    if conf.subnet_file == "":
        raise CniError(INVALID_NETCONF, "subnetFile must not be empty")
    return conf


def config_version(doc: dict[str, Any]) -> str:
    """What libcni's version.ConfigDecoder reads: cniVersion, "0.1.0" when absent or empty."""
    value = field(doc, "cniVersion")
    if value is None or value == "":
        return "0.1.0"
    if not isinstance(value, str):
        raise CniError(DECODE_FAILURE, "decoding version from network config: json: cannot "
                       f"unmarshal {_kind(value)} into Go struct field .cniVersion of type string")
    return value
