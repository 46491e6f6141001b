"""Daemon configuration: one frozen, typed object built by one pure function.

Precedence, highest first: command-line flag > ``FLANNELD_<FLAG>`` environment variable >
YAML config file (``--config`` / ``FLANNELD_CONFIG``; keys are flag names, ``-`` or ``_``) >
default.  Flag names and defaults follow Go flanneld where they make sense.

The command line is read the way Go's ``flag`` package reads Go flanneld's: ``-flag=value``,
``--flag=value``, ``-flag value`` and ``--flag value`` are one flag, bools take only
``-flag`` / ``-flag=false``.  :func:`normalize_argv`, a pure pre-pass, rewrites such an argv
into argparse's form (``--flag=value``), takes klog's ``-v=N`` apart from our ``-v``/``-vv``
count, and sets aside the klog flags that are accepted without effect; argparse then parses
the result, so the precedence above is the same for every spelling.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, NoReturn

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
    public_ipv6: str = ""  # dual stack: PublicIPv6 of our lease (else the interface's address)
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
    wireguard_driver: str = "auto"  # auto | kernel | userspace (the wireguard backend's device)
    log_format: str = "text"  # text | json
    verbose: int = 0
    # Go flanneld flags accepted here before their feature exists (see README, "Flags").
    ip_blackhole_route: bool = False  # not implemented yet: a warning when set
    ip_masq_fully_random_disable: bool = False  # MASQUERADE without --random-fully
    net_config_path: str = "/etc/kube-flannel/net-conf.json"  # Kubernetes mode
    kube_subnet_mgr: bool = False  # leases from the Kubernetes API (node podCIDRs), not etcd
    kube_api_url: str = ""
    kubeconfig_file: str = ""
    kube_annotation_prefix: str = "flannel.alpha.coreos.com"
    set_node_network_unavailable: bool = True
    # Flags that were given but have no effect (klog's, features not there yet), one entry
    # each, e.g. "--vmodule (klog flag)": logged as one warning line once logging is set up.
    ignored_flags: tuple[str, ...] = ()


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
    "public-ipv6": ("str", "IPv6 address accessible by other nodes for inter-host communication "
                    "(dual stack: EnableIPv6 in the network config)"),
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
    "wireguard-driver": ("str", "wireguard backend: auto (the kernel module when there is one, "
                         "else wireguard-go), kernel or userspace"),
    "log-format": ("str", "text (key=value) or json"),
    # Go flanneld's flags whose feature is not here (yet): accepted, stored, see _not_honoured.
    "ip-masq-fully-random-disable": ("bool", "MASQUERADE without --random-fully"),
    "ip-blackhole-route": ("bool", "add a blackhole route for the node's own subnet (accepted; not "
                           "implemented yet: ignored with a warning)"),
    "kube-subnet-mgr": ("bool", "use the Kubernetes API instead of etcd: the node's lease is "
                        "its podCIDR, published as node annotations"),
    "kube-api-url": ("str", "Kubernetes API server URL (Kubernetes mode; overrides the "
                     "kubeconfig's server)"),
    "kubeconfig-file": ("str", "kubeconfig file (Kubernetes mode; default: in-cluster config)"),
    "kube-annotation-prefix": ("str", "Kubernetes node annotation prefix (Kubernetes mode)"),
    "net-config-path": ("str", "network config file of the Kubernetes mode"),
    "set-node-network-unavailable": ("bool", "set the node's NetworkUnavailable condition False "
                                     "once the datapath is up (Kubernetes mode)"),
}

# Go flanneld flags that only mean something with --kube-subnet-mgr.
_KUBE_FLAGS = ("kube-api-url", "kubeconfig-file", "kube-annotation-prefix", "net-config-path",
               "set-node-network-unavailable")
_GO_ONLY_FLAGS = ("ip-masq-fully-random-disable", "ip-blackhole-route")

# klog's flags (Go flanneld registers them through klog.InitFlags): accepted and ignored, each
# named once in the start-up warning.  True: a bool (-flag or -flag=BOOL); False: takes a value.
IGNORED_KLOG_FLAGS: dict[str, bool] = {
    "vmodule": False,
    "log_backtrace_at": False,
    "logtostderr": True,
    "alsologtostderr": True,
    "stderrthreshold": False,
    "log_dir": False,
    "log_file": False,
    "log_file_max_size": False,
    "add_dir_header": True,
    "skip_headers": True,
    "skip_log_headers": True,
    "one_output": True,
}
# Go flanneld copies these klog flags into its own flag set, so FLANNELD_<NAME> sets them too.
_KLOG_ENV = ("FLANNELD_VMODULE", "FLANNELD_LOG_BACKTRACE_AT")

# strconv.ParseBool's spellings: what Go accepts in -flag=BOOL.
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_COUNT = re.compile(r"v+")


def _attr(flag: str) -> str:
    return flag.replace("-", "_")


def _env_name(flag: str) -> str:
    return "FLANNELD_" + _attr(flag).upper()


_HELP_EPILOG = """\
Every flag can also be set as FLANNELD_<FLAG> (e.g. FLANNELD_ETCD_ENDPOINTS) or in the YAML
--config file; precedence: flag > environment > file > default.

Go flanneld's flag syntax works: -etcd-endpoints=URL, --etcd-endpoints=URL, -etcd-endpoints URL
and --etcd-endpoints URL are the same flag; a bool takes -ip-masq or -ip-masq=false, never a
separate value (as in Go).  -h/-help/--help is this help.  -v, -vv (or --verbose) count our
verbosity: -v debug lines of the daemon, -vv those of the libraries too.  klog's level --v=N
(-v=N, --v N, -v N, FLANNELD_V) maps to it: 0-1 info (the default), 2-4 like -v, 5 and more like
-vv.  klog's other flags (--vmodule, --log_backtrace_at, --logtostderr, --alsologtostderr,
--stderrthreshold, --log_dir, --log_file, ...) are accepted and ignored with one warning.
An unknown flag or a positional argument exits 2 (Go flanneld prints the usage and exits 0).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (the flag list is --help's job)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (flanneld --help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flanneld",
        description="flannel-compatible overlay network daemon (vxlan, host-gw, udp, wireguard; "
                    "leases from etcd or, with --kube-subnet-mgr, from the Kubernetes API).",
        epilog=_HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # Go has no abbreviations: --etcd-end is unknown, not --etcd-endpoints
    )
    go_only = parser.add_argument_group(
        "Go flanneld flags whose feature is not here yet (accepted; see README)")
    defaults = DaemonConfig()
    for flag, (kind, help_text) in _FLAGS.items():
        group = go_only if flag in _GO_ONLY_FLAGS else parser
        default = getattr(defaults, _attr(flag))
        help_full = f"{help_text} (default: {default!r}; env {_env_name(flag)})"
        if kind == "bool":
            group.add_argument(
                f"--{flag}", nargs="?", const="true", default=None, metavar="BOOL", help=help_full
            )
        elif kind == "list":
            group.add_argument(f"--{flag}", action="append", default=None, help=help_full)
        else:
            group.add_argument(f"--{flag}", default=None, help=help_full)
    parser.add_argument("--config", default=None, help="YAML config file (env FLANNELD_CONFIG)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=None,
        help="-v: the daemon's debug lines; -vv: the libraries' too (klog's --v=N: see below)",
    )
    parser.add_argument("--version", action="version", version=f"flanneld {__version__}")
    return parser


@dataclass(frozen=True)
class NormalizedArgv:
    """A Go-style command line in argparse's form, and what the pre-pass took out of it."""

    argv: tuple[str, ...]
    klog_v: int | None = None  # klog's --v=N, the last one given
    ignored: tuple[str, ...] = ()  # klog flags given, "--name" each, first-seen order


def klog_verbosity(level: int) -> int:
    """klog's -v level as our -v count: 0-1 info (0), 2-4 daemon debug (1), >= 5 libraries (2).

    Go flanneld's own V(1) lines (peers added and removed) are info lines here already.
    """
    if level >= 5:
        return 2
    return 1 if level >= 2 else 0


def _go_bool(value: str, flag: str) -> bool:
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise ConfigError(f"{flag}: expected true or false, got {value!r}")


def _flag_kind(name: str) -> str | None:
    if name in _FLAGS:
        return _FLAGS[name][0]
    return "str" if name == "config" else None


def normalize_argv(argv: Sequence[str]) -> NormalizedArgv:
    """Go flag syntax -> argparse's: ``-flag value``, ``-flag=value``, ``--flag value`` ->
    ``--flag=value``; a bare bool ``-flag`` -> ``--flag=true``.  Pure.

    ``-h``/``-help`` are help; ``-v``, ``-vv``, ``--verbose`` stay our count; ``-v=N`` and
    ``-v N`` (N an integer) are klog's level, returned as ``klog_v``; klog's other flags are
    dropped (with their values) and listed in ``ignored``.  The first unknown flag and the
    rest of argv are passed on as they are, for argparse to reject.  ConfigError: a value flag
    without its value, a positional argument (Go would stop parsing there and drop the rest;
    after a bare bool that is Go's ``-ip-masq false`` trap, and the message says so).
    """
    out: list[str] = []
    ignored: list[str] = []
    klog_v: int | None = None
    i = 0
    bare_bool = ""  # the previous token, when it was a bool flag without "=value"
    while i < len(argv):
        tok = argv[i]
        i += 1
        after_bool, bare_bool = bare_bool, ""
        if tok == "--":  # Go: the end of the flags; everything after it is positional
            if i < len(argv):
                raise ConfigError(f"unexpected argument {argv[i]!r} after '--': flanneld takes "
                                  "no positional arguments")
            break
        if tok == "-" or not tok.startswith("-"):
            if after_bool:
                raise ConfigError(
                    f"unexpected argument {tok!r} after {after_bool}: a bool flag takes its value "
                    f"as {after_bool}={tok} (Go flag syntax), and flanneld takes no positional "
                    "arguments")
            raise ConfigError(f"unexpected argument {tok!r}: flanneld takes no positional arguments")
        body = tok[2:] if tok.startswith("--") else tok[1:]
        name, eq, value = body.partition("=")
        has_value = bool(eq)
        if name in ("h", "help"):
            out.append("--help")
            continue
        if name == "version":
            if not has_value or _go_bool(value, tok.split("=")[0]):
                out.append("--version")
            continue
        if name == "v":
            if has_value:
                klog_v = _klog_level(value, tok.split("=")[0])
            elif i < len(argv) and _INTEGER.fullmatch(argv[i]):
                klog_v = int(argv[i])
                i += 1
            else:
                out.append("-v")
            continue
        if name in IGNORED_KLOG_FLAGS:
            if IGNORED_KLOG_FLAGS[name]:
                if has_value:
                    _go_bool(value, tok.split("=")[0])
            elif not has_value:
                if i >= len(argv):
                    raise ConfigError(f"flag needs an argument: {tok}")
                i += 1
            if f"--{name}" not in ignored:
                ignored.append(f"--{name}")
            continue
        if (_COUNT.fullmatch(name) or name == "verbose") and not has_value:
            out.append(f"-{name}" if name != "verbose" else "--verbose")
            continue
        kind = _flag_kind(name)
        if kind is None:  # unknown (or not a flag at all, like ---x): argparse says so
            out.extend(argv[i - 1:])
            break
        if kind == "bool":
            out.append(f"--{name}={value if has_value else 'true'}")
            if not has_value:
                bare_bool = tok
            continue
        if not has_value:
            if i >= len(argv):
                raise ConfigError(f"flag needs an argument: {tok}")
            value = argv[i]
            i += 1
        out.append(f"--{name}={value}")
    return NormalizedArgv(tuple(out), klog_v, tuple(ignored))


def _klog_level(value: str, where: str) -> int:
    if not _INTEGER.fullmatch(value.strip()):
        raise ConfigError(f"{where}: expected an integer (klog's verbosity level), got {value!r}")
    return int(value)


def _convert(where: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "t", "yes", "on"):
            return True
        if text in ("0", "false", "f", "no", "off", ""):
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
            if isinstance(value, bool):
                raise ValueError
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

    argv may use Go flanneld's flag syntax (see :func:`normalize_argv`).  Unknown flags exit 2
    through argparse (one line); every other problem is a ConfigError.  Nothing is logged:
    flags accepted without effect are listed in the result's ``ignored_flags``.
    """
    norm = normalize_argv(argv)
    args = build_parser().parse_args(list(norm.argv))
    config_path = args.config or environ.get("FLANNELD_CONFIG", "")
    from_file = _load_file(config_path, read_file or _read_text) if config_path else {}

    values: dict[str, Any] = {}
    for flag, (kind, _) in _FLAGS.items():
        cli_value = getattr(args, _attr(flag))
        if cli_value is not None:
            if kind == "list":
                values[_attr(flag)] = tuple(
                    v for item in cli_value for v in _convert(f"--{flag}", kind, item))
            else:
                values[_attr(flag)] = _convert(f"--{flag}", kind, cli_value)
        elif _env_name(flag) in environ:
            values[_attr(flag)] = _convert(f"env {flag}", kind, environ[_env_name(flag)])
        elif flag in from_file:
            values[_attr(flag)] = _convert(f"config file {flag}", kind, from_file[flag])
    if args.verbose is not None or norm.klog_v is not None:
        from_klog = klog_verbosity(norm.klog_v) if norm.klog_v is not None else 0
        values["verbose"] = max(args.verbose or 0, from_klog)
    elif "FLANNELD_VERBOSE" in environ:
        values["verbose"] = _convert("env verbose", "int", environ["FLANNELD_VERBOSE"])
    elif "FLANNELD_V" in environ:
        level = environ["FLANNELD_V"]
        values["verbose"] = klog_verbosity(_klog_level(level, "env FLANNELD_V") if level else 0)
    elif "verbose" in from_file:
        values["verbose"] = _convert("config file verbose", "int", from_file["verbose"])
    config = DaemonConfig(**values)
    validate(config)
    klog_flags = [f"{name} (klog flag)" for name in norm.ignored]
    klog_flags += [f"{name} (klog flag)" for name in _KLOG_ENV if environ.get(name)]
    return replace(config, ignored_flags=tuple(klog_flags) + _not_honoured(config))


def _not_honoured(config: DaemonConfig) -> tuple[str, ...]:
    """The Go-only flags set away from their defaults, whose feature is not here yet."""
    defaults = DaemonConfig()
    reasons = {"ip-blackhole-route": "not implemented yet"}
    if not config.kube_subnet_mgr:
        reasons.update({flag: "Kubernetes mode only" for flag in _KUBE_FLAGS})
    return tuple(
        f"--{flag} ({reason})"
        for flag, reason in reasons.items()
        if getattr(config, _attr(flag)) != getattr(defaults, _attr(flag))
    )


def _seconds(value: float) -> bool:
    return math.isfinite(value) and value > 0


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
    if config.kube_subnet_mgr and config.kube_annotation_prefix.strip("/") == "":
        raise ConfigError("--kube-annotation-prefix: must not be empty")
    if config.public_ip:
        try:
            IPv4Address(config.public_ip)
        except ValueError:
            raise ConfigError(f"--public-ip: not an IPv4 address: {config.public_ip!r}") from None
    if config.public_ipv6:
        try:
            IPv6Address(config.public_ipv6)
        except ValueError:
            raise ConfigError(f"--public-ipv6: not an IPv6 address: {config.public_ipv6!r}") from None
    if config.iface_can_reach:
        try:
            IPv4Address(config.iface_can_reach)
        except ValueError:
            raise ConfigError(f"--iface-can-reach: not an IPv4 address: {config.iface_can_reach!r}") from None
    for pattern in config.iface_regex:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--iface-regex: not a valid regular expression {pattern!r}: {exc}") from None
    if config.healthz_ip:  # empty: every address, as in Go
        try:
            ip_address(config.healthz_ip)
        except ValueError:
            raise ConfigError(f"--healthz-ip: not an IP address: {config.healthz_ip!r}") from None
    if config.subnet_lease_renew_margin < 1:
        raise ConfigError(
            f"--subnet-lease-renew-margin: must be at least 1 minute, got {config.subnet_lease_renew_margin}")
    if config.subnet_lease_ttl < 5:
        raise ConfigError(f"--subnet-lease-ttl: must be at least 5 seconds, got {config.subnet_lease_ttl}")
    if not 0 <= config.healthz_port <= 65535:
        raise ConfigError(f"--healthz-port: out of range: {config.healthz_port} (0-65535; 0: no listener)")
    if config.iptables_resync < 1:
        raise ConfigError(f"--iptables-resync: must be at least 1 second, got {config.iptables_resync}")
    if config.masq_mode not in ("auto", "nftables", "iptables"):
        raise ConfigError(f"--masq-mode: expected auto, nftables or iptables, got {config.masq_mode!r}")
    if config.wireguard_driver not in ("auto", "kernel", "userspace"):
        raise ConfigError("--wireguard-driver: expected auto, kernel or userspace, got "
                          f"{config.wireguard_driver!r}")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"--log-format: expected text or json, got {config.log_format!r}")
    for flag in ("etcd-timeout", "drift-interval", "resync-interval"):
        value = getattr(config, _attr(flag))
        if not _seconds(value):
            raise ConfigError(f"--{flag}: must be a positive number of seconds, got {value}")
    if not (math.isfinite(config.etcd_unreachable_not_ready) and config.etcd_unreachable_not_ready >= 0):
        raise ConfigError(
            "--etcd-unreachable-not-ready: must not be negative (0: never), got "
            f"{config.etcd_unreachable_not_ready}")


def config_fields() -> list[str]:
    return [f.name for f in fields(DaemonConfig)]
