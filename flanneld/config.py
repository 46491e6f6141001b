"""Daemon configuration: one frozen, typed object built by one pure function.

Precedence, highest first: command-line flag > ``FLANNELD_<FLAG>`` environment variable >
YAML config file (``--config`` / ``FLANNELD_CONFIG``; keys are flag names, ``-`` or ``_``) >
default.  Flag names and defaults follow Go flanneld where they make sense.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from ipaddress import IPv4Address
from typing import Any

from flanneld import __version__
from flanneld.errors import ConfigError
from flanneld.lease import DEFAULT_PREFIX


@dataclass(frozen=True)
class DaemonConfig:
    etcd_endpoints: str = "http://127.0.0.1:2379"
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    etcd_cafile: str = ""
    etcd_username: str = ""
    etcd_password: str = ""
    etcd_timeout: float = 5.0
    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str = ""
    public_ip: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    subnet_lease_renew_margin: int = 60  # minutes
    subnet_lease_ttl: int = 24 * 3600  # seconds (Go: fixed 24 h)
    ip_masq: bool = False
    iptables_resync: int = 5  # seconds between masquerade/forward rule checks
    iptables_forward_rules: bool = True
    masq_mode: str = "auto"  # auto | nftables | iptables
    healthz_ip: str = "127.0.0.1"
    healthz_port: int = 0  # 0: no listener (Go's default)
    docker_opts_file: str = ""  # mk-docker-opts.sh output; empty: not written
    cni_conf_file: str = ""  # e.g. /etc/cni/net.d/10-flannel.conflist; empty: not written
    drift_interval: float = 10.0  # seconds between drift-repair passes
    resync_interval: float = 300.0  # seconds between safety-net re-lists of the leases
    etcd_unreachable_not_ready: float = 30.0  # /readyz 503 after etcd failed this long (0: never)
    metrics_per_peer: bool = False
    log_format: str = "text"  # text | json
    verbose: int = 0


# name -> (type, help).  Types: str, int, float, bool, list (repeatable).
_FLAGS: dict[str, tuple[str, str]] = {
    "etcd-endpoints": ("str", "comma-separated etcd endpoints (failover in order)"),
    "etcd-prefix": ("str", "etcd prefix of the network config and leases"),
    "etcd-certfile": ("str", "client certificate for etcd TLS"),
    "etcd-keyfile": ("str", "client key for etcd TLS"),
    "etcd-cafile": ("str", "CA bundle for etcd TLS (needs certfile and keyfile too)"),
    "etcd-username": ("str", "etcd basic auth user"),
    "etcd-password": ("str", "etcd basic auth password"),
    "etcd-timeout": ("float", "deadline of each etcd request, seconds"),
    "iface": ("list", "interface (name or address) for inter-host traffic; repeatable"),
    "iface-regex": ("list", "regex matched against interface names, then addresses; repeatable"),
    "iface-can-reach": ("str", "pick the interface that routes to this address"),
    "public-ip": ("str", "IP accessible by other nodes for inter-host communication"),
    "subnet-file": ("str", "file the subnet environment is written to"),
    "subnet-lease-renew-margin": ("int", "renew the lease this many minutes before it expires"),
    "subnet-lease-ttl": ("int", "TTL of the etcd lease behind our subnet, seconds"),
    "ip-masq": ("bool", "masquerade traffic leaving the flannel network"),
    "iptables-resync": ("int", "seconds between checks of the masquerade/forward rules"),
    "iptables-forward-rules": ("bool", "add forward-accept rules for the flannel network"),
    "masq-mode": ("str", "firewall for --ip-masq: auto, nftables or iptables"),
    "healthz-ip": ("str", "address of the /healthz, /readyz and /metrics listener"),
    "healthz-port": ("int", "port of that listener (0: disabled)"),
    "docker-opts-file": ("str", "also write docker options (mk-docker-opts.sh format) here"),
    "cni-conf-file": ("str", "also write the node's CNI conflist here"),
    "drift-interval": ("float", "seconds between drift-repair passes over the datapath"),
    "resync-interval": ("float", "seconds between re-lists of all leases behind the watch"),
    "etcd-unreachable-not-ready": ("float", "/readyz fails once etcd has been unreachable this "
                                   "many seconds (0: never)"),
    "metrics-per-peer": ("bool", "export per-peer forwarding series"),
    "log-format": ("str", "text (key=value) or json"),
}


def _attr(flag: str) -> str:
    return flag.replace("-", "_")


def _env_name(flag: str) -> str:
    return "FLANNELD_" + _attr(flag).upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flanneld",
        description="flannel-compatible overlay network daemon (vxlan, host-gw, udp).",
        epilog="Every flag can also be set as FLANNELD_<FLAG> (e.g. FLANNELD_ETCD_ENDPOINTS) or in "
        "the YAML --config file; precedence: flag > environment > file > default.",
    )
    defaults = DaemonConfig()
    for flag, (kind, help_text) in _FLAGS.items():
        default = getattr(defaults, _attr(flag))
        help_full = f"{help_text} (default: {default!r}; env {_env_name(flag)})"
        if kind == "bool":
            parser.add_argument(
                f"--{flag}", nargs="?", const="true", default=None, metavar="BOOL", help=help_full
            )
        elif kind == "list":
            parser.add_argument(f"--{flag}", action="append", default=None, help=help_full)
        else:
            parser.add_argument(f"--{flag}", default=None, help=help_full)
    parser.add_argument("--config", default=None, help="YAML config file (env FLANNELD_CONFIG)")
    parser.add_argument("-v", "--verbose", action="count", default=None, help="more logs (-vv: debug)")
    parser.add_argument("--version", action="version", version=f"flanneld {__version__}")
    return parser


def _convert(flag: str, kind: str, value: Any, source: str) -> Any:
    where = f"{source} {flag}"
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind == "int":
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if kind == "list":
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        raise ConfigError(f"{where}: expected a list or a comma-separated string, got {value!r}")
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)


def _load_file(path: str, read_file: Callable[[str], str]) -> dict[str, Any]:
    import yaml

    try:
        text = read_file(path)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of flag names to values")
    out: dict[str, Any] = {}
    for key, value in data.items():
        flag = str(key).replace("_", "-")
        if flag not in _FLAGS and flag != "verbose":
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[flag] = value
    return out


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def build_config(
    argv: Sequence[str],
    environ: Mapping[str, str],
    read_file: Callable[[str], str] | None = None,
) -> DaemonConfig:
    """The daemon's config from argv, the environment and an optional YAML file.

    Usage errors in argv exit 2 through argparse; every other problem is a ConfigError.
    """
    args = build_parser().parse_args(list(argv))
    config_path = args.config or environ.get("FLANNELD_CONFIG", "")
    from_file = _load_file(config_path, read_file or _read_text) if config_path else {}

    values: dict[str, Any] = {}
    for flag, (kind, _) in _FLAGS.items():
        cli_value = getattr(args, _attr(flag))
        if cli_value is not None:
            if kind == "list":
                cli_value = tuple(v for item in cli_value for v in _convert(flag, kind, item, "--"))
                values[_attr(flag)] = cli_value
            else:
                values[_attr(flag)] = _convert(flag, kind, cli_value, "flag --")
        elif _env_name(flag) in environ:
            values[_attr(flag)] = _convert(flag, kind, environ[_env_name(flag)], "env")
        elif flag in from_file:
            values[_attr(flag)] = _convert(flag, kind, from_file[flag], "config file")
    if args.verbose is not None:
        values["verbose"] = args.verbose
    elif "FLANNELD_VERBOSE" in environ:
        values["verbose"] = _convert("verbose", "int", environ["FLANNELD_VERBOSE"], "env")
    elif "verbose" in from_file:
        values["verbose"] = _convert("verbose", "int", from_file["verbose"], "config file")
    config = DaemonConfig(**values)
    validate(config)
    return config


def validate(config: DaemonConfig) -> None:
    tls = (config.etcd_cafile, config.etcd_certfile, config.etcd_keyfile)
    if any(tls) and not all(tls):
        missing = [
            name
            for name, value in zip(("--etcd-cafile", "--etcd-certfile", "--etcd-keyfile"), tls, strict=True)
            if not value
        ]
        raise ConfigError(
            "etcd TLS needs --etcd-cafile, --etcd-certfile and --etcd-keyfile together; missing: "
            + ", ".join(missing)
            + " (refusing to fall back to plain http)"
        )
    if bool(config.etcd_username) != bool(config.etcd_password):
        raise ConfigError("--etcd-username and --etcd-password go together")
    if config.public_ip:
        try:
            IPv4Address(config.public_ip)
        except ValueError:
            raise ConfigError(f"--public-ip: not an IPv4 address: {config.public_ip!r}") from None
    if config.iface_can_reach:
        try:
            IPv4Address(config.iface_can_reach)
        except ValueError:
            raise ConfigError(f"--iface-can-reach: not an IPv4 address: {config.iface_can_reach!r}") from None
    if config.subnet_lease_renew_margin < 1:
        raise ConfigError("--subnet-lease-renew-margin: must be at least 1 minute")
    if config.subnet_lease_ttl < 5:
        raise ConfigError("--subnet-lease-ttl: must be at least 5 seconds")
    if not 0 <= config.healthz_port <= 65535:
        raise ConfigError(f"--healthz-port: out of range: {config.healthz_port}")
    if config.masq_mode not in ("auto", "nftables", "iptables"):
        raise ConfigError(f"--masq-mode: expected auto, nftables or iptables, got {config.masq_mode!r}")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"--log-format: expected text or json, got {config.log_format!r}")
    if config.resync_interval <= 0:
        raise ConfigError("--resync-interval: must be positive")
    if config.drift_interval <= 0:
        raise ConfigError("--drift-interval: must be positive")
    if config.etcd_timeout <= 0:
        raise ConfigError("--etcd-timeout: must be positive")


def config_fields() -> list[str]:
    return [f.name for f in fields(DaemonConfig)]
