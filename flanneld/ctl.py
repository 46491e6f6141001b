"""`flannelctl`: look at and change what flannel keeps in etcd.

    flannelctl subnets [-o table|json]              every key: leases, reservations, rejected
    flannelctl subnets reserve SUBNET --public-ip IP [--backend-type T] [--force]
    flannelctl subnets release SUBNET
    flannelctl config get [-o json|yaml]
    flannelctl config set [--dry-run] FILE          YAML or JSON, validated like the daemon does
    flannelctl docker-opts [--subnet-file F]        mk-docker-opts.sh output for this node
    flannelctl --kube-subnet-mgr [--kubeconfig-file F] [--kube-api-url U] subnets [-o json]
                                                    Kubernetes mode: the nodes' leases

``-o`` may come before or after the command.  Reads the same etcd flags and FLANNELD_*
environment variables as flanneld.  Data goes to stdout, messages to stderr; exit 1 on failure
or refusal (nothing is changed then), 2 on usage errors (a bad flag or variable value).

With ``--kube-subnet-mgr`` (as the daemon's) the leases are read from the Nodes instead of etcd
(each node's podCIDR and its ``flannel.alpha.coreos.com/*`` annotations, exactly as the daemons
see them: ``flanneld.kube_store``), with a NODE column; the network config is the
``--net-config-path`` file.  Only ``subnets`` (listing) and ``config get`` work there: leases
are written by each node's flanneld, not by hand.

``subnets reserve`` checks a reservation as the daemons check a lease (the same LeasePolicy:
inside Network, SubnetLen long, a usable PublicIP, no etcd address covered), within SubnetMin
and SubnetMax, and refuses a subnet another PublicIP holds unless ``--force``.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flanneld import __version__
from flanneld.errors import ConfigError, FlannelError, LeaseDecodeError
from flanneld.lease import LeaseAttrs, config_key, parse_subnet_key, subnet_key, subnets_prefix
from flanneld.subnets import overlaps

# flag -> (default, help)
_ETCD_FLAGS: dict[str, tuple[str, str]] = {
    "etcd-endpoints": ("http://127.0.0.1:2379", "comma-separated etcd endpoints (failover in order)"),
    "etcd-prefix": ("/coreos.com/network", "etcd prefix of the network config and leases"),
    "etcd-certfile": ("", "client certificate for etcd TLS (with --etcd-keyfile and --etcd-cafile)"),
    "etcd-keyfile": ("", "client key for etcd TLS"),
    "etcd-cafile": ("", "CA bundle for etcd TLS (needs --etcd-certfile and --etcd-keyfile too)"),
    "etcd-username": ("", "etcd basic auth user (with --etcd-password)"),
    "etcd-password": ("", "etcd basic auth password"),
    "etcd-timeout": ("5", "deadline of each etcd request, seconds (a positive number)"),
}

# Kubernetes mode's flags (the daemon's names): flag -> (default, help)
_KUBE_FLAGS: dict[str, tuple[str, str]] = {
    "kubeconfig-file": ("", "kubeconfig file (default: in-cluster config)"),
    "kube-api-url": ("", "Kubernetes API server URL (overrides the kubeconfig's server)"),
    "kube-annotation-prefix": ("flannel.alpha.coreos.com", "the nodes' annotation prefix"),
    "net-config-path": ("/etc/kube-flannel/net-conf.json",
                        "the network config file (leases are checked against it when it exists)"),
}
_KUBE_COMMANDS = ("subnets", "config get")

# What each command prints, by format; the first one is the default.
_FORMATS: dict[str, tuple[str, ...]] = {
    "subnets": ("table", "json"),
    "config get": ("json", "yaml"),
}
_ALL_FORMATS = ("table", "json", "yaml")
_FORMATS_TEXT = "; ".join(f"{cmd}: {'|'.join(fmts)} (default {fmts[0]})" for cmd, fmts in _FORMATS.items())
_OUTPUTS_SHORT = ", ".join(f"{cmd}: {'|'.join(fmts)}" for cmd, fmts in _FORMATS.items())
_OUTPUT_HELP = f"output format, before or after the command: {_FORMATS_TEXT}"


def _env_name(flag: str) -> str:
    return "FLANNELD_" + flag.replace("-", "_").upper()


def _subnet_arg(text: str) -> IPv4Network:
    try:
        return IPv4Network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a subnet (a.b.c.d/len, host bits zero): {exc}") from None


def _ip_arg(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {text!r}") from None


def _timeout_value(text: str) -> float:
    """A positive, finite number of seconds; ValueError says what is wrong."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {text!r}")
    return value


def _timeout_arg(text: str) -> str:
    try:
        _timeout_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _endpoints_arg(text: str) -> str:
    from flanneld.etcd_store import parse_endpoints

    try:
        parse_endpoints(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--etcd-endpoints: ")) from None
    return text


_FLAG_TYPES = {"etcd-timeout": _timeout_arg, "etcd-endpoints": _endpoints_arg}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flannelctl", description="Inspect and change flannel's state in etcd.",
        epilog="Exit status: 0 done, 1 failed or refused (a refusal changes nothing), 2 usage error (a bad "
        "flag or FLANNELD_* value).  The network config's fields: docs/config.md.",
    )
    parser.add_argument("--version", action="version", version=f"flannelctl {__version__}",
                        help="print the version and exit")
    for flag, (default, text) in _ETCD_FLAGS.items():
        parser.add_argument(f"--{flag}", default=None, type=_FLAG_TYPES.get(flag, str),
                            metavar=flag.removeprefix("etcd-").upper(),
                            help=f"{text} (default {default!r}; env {_env_name(flag)})")
    kube = parser.add_argument_group(
        "Kubernetes mode", "read the leases from the Nodes, as `flanneld --kube-subnet-mgr` does "
        "(only `subnets` and `config get` work in this mode)")
    kube.add_argument("--kube-subnet-mgr", action="store_true", default=None,
                      help="leases are the nodes' podCIDRs and annotations, not etcd keys (env "
                      f"{_env_name('kube-subnet-mgr')}=true)")
    for flag, (default, text) in _KUBE_FLAGS.items():
        kube.add_argument(f"--{flag}", default=None, metavar=flag.split("-")[-1].upper(),
                          help=f"{text} (default {default!r}; env {_env_name(flag)})")
    parser.add_argument("-o", "--output", choices=_ALL_FORMATS, default=None, metavar="FORMAT",
                        help=_OUTPUT_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    subnets = sub.add_parser("subnets", help="list leases; reserve or release subnets",
                             description="List every key under <prefix>/subnets/: leases, "
                             "reservations, and the keys the daemons reject (with the reason).")
    subnets.add_argument("-o", "--output", choices=_FORMATS["subnets"], default=argparse.SUPPRESS,
                         help="table (default) or json")
    subnets_sub = subnets.add_subparsers(dest="action", metavar="ACTION")
    reserve = subnets_sub.add_parser(
        "reserve", help="reserve SUBNET for a node (never expires)",
        description="Keep SUBNET for the node with PUBLIC_IP (a key without an etcd lease: it "
        "never expires; that node takes it when it starts).  Checked like the daemons check a "
        "lease; refused when another PublicIP holds SUBNET, unless --force.")
    reserve.add_argument("subnet", type=_subnet_arg, metavar="SUBNET",
                         help="a.b.c.d/len inside Network, of the network config's SubnetLen, "
                         "between SubnetMin and SubnetMax")
    reserve.add_argument("--public-ip", required=True, type=_ip_arg,
                         help="PublicIP of the node the subnet is kept for (its --public-ip or "
                         "interface address)")
    reserve.add_argument("--backend-type", default="",
                         help="BackendType of the reservation: vxlan, host-gw or udp (default: "
                         "the network config's Backend.Type; udp is written without one, as Go does)")
    reserve.add_argument("--force", action="store_true",
                         help="also when another PublicIP holds SUBNET: overwrite its lease or "
                         "reservation and revoke its etcd lease, so that its node gives the "
                         "subnet up (its pods lose the network until they are re-created)")
    release = subnets_sub.add_parser("release", help="delete the lease or reservation of SUBNET",
                                     description="Delete the key of SUBNET (a.b.c.d-len, or a "
                                     "dual-stack key a.b.c.d-len&<ipv6>-len whose IPv4 half it is).")
    release.add_argument("subnet", type=_subnet_arg, metavar="SUBNET", help="a.b.c.d/len")

    config = sub.add_parser("config", help="read or write the network config",
                            description="Read or write <prefix>/config (docs/config.md).")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = config_sub.add_parser("get", help="print the network config",
                                description="Print the stored network config.")
    get.add_argument("-o", "--output", choices=_FORMATS["config get"], default=argparse.SUPPRESS,
                     help="json (default) or yaml")
    put = config_sub.add_parser(
        "set", help="validate FILE (YAML or JSON) and store it",
        description="Validate FILE as the daemons validate the network config and store it.  "
        "Running daemons read the config only at start: restart them to use it.")
    put.add_argument("file", metavar="FILE", help="path, or - for stdin; JSON when it starts "
                     "with '{', else YAML")
    put.add_argument("--dry-run", action="store_true",
                     help="print a unified diff between the stored config and FILE (both as "
                     "pretty-printed JSON, keys sorted) and store nothing")

    docker = sub.add_parser("docker-opts", help="print docker options from subnet.env",
                            description="Print mk-docker-opts.sh output for this node.")
    docker.add_argument("--subnet-file", default=os.environ.get("FLANNELD_SUBNET_FILE",
                                                                "/run/flannel/subnet.env"),
                        help="subnet.env written by flanneld (default /run/flannel/subnet.env; "
                        "env FLANNELD_SUBNET_FILE)")
    return parser


def _command_name(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if action else str(args.command)


def _resolve_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One -o for the whole command line (before or after the command), checked per command."""
    name = _command_name(args)
    given = getattr(args, "output", None)
    formats = _FORMATS.get(name)
    if formats is None:
        if given is not None:
            parser.error(f"-o/--output: 'flannelctl {name}' prints no data ({_OUTPUTS_SHORT})")
        return
    if given is None:
        args.output = formats[0]
    elif given not in formats:
        parser.error(f"-o/--output {given}: 'flannelctl {name}' prints {' or '.join(formats)}")


@dataclass(frozen=True)
class EtcdSettings:
    """The etcd flags, checked: values from flags, FLANNELD_* variables or defaults."""

    endpoints: str
    prefix: str
    timeout: float
    cafile: str
    certfile: str
    keyfile: str
    username: str
    password: str

    def store(self) -> Any:
        from flanneld.etcd_store import EtcdStore, TLSFiles, parse_endpoints

        tls = TLSFiles(self.cafile, self.certfile, self.keyfile) if self.cafile else None
        return EtcdStore(parse_endpoints(self.endpoints), timeout=self.timeout, tls=tls,
                         username=self.username or None, password=self.password or None)


def etcd_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EtcdSettings:
    """The etcd settings; a bad value (flag or variable) is a usage error naming it."""
    from flanneld.config import DaemonConfig, validate
    from flanneld.etcd_store import parse_endpoints

    values: dict[str, str] = {}
    for flag, (default, _) in _ETCD_FLAGS.items():
        given = getattr(args, flag.replace("-", "_"))
        env = os.environ.get(_env_name(flag))
        values[flag] = given if given is not None else env if env is not None else default
        if given is None and env is not None:  # flags were checked by argparse already
            try:
                if flag == "etcd-timeout":
                    _timeout_value(env)
                elif flag == "etcd-endpoints":
                    parse_endpoints(env)
            except (ValueError, ConfigError) as exc:
                parser.error(f"{_env_name(flag)}={env!r}: {str(exc).removeprefix('--etcd-endpoints: ')}")
    cfg = DaemonConfig(
        etcd_endpoints=values["etcd-endpoints"], etcd_cafile=values["etcd-cafile"],
        etcd_certfile=values["etcd-certfile"], etcd_keyfile=values["etcd-keyfile"],
        etcd_username=values["etcd-username"], etcd_password=values["etcd-password"],
    )
    try:
        validate(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    return EtcdSettings(values["etcd-endpoints"], values["etcd-prefix"],
                        _timeout_value(values["etcd-timeout"]), cfg.etcd_cafile, cfg.etcd_certfile,
                        cfg.etcd_keyfile, cfg.etcd_username, cfg.etcd_password)


@dataclass(frozen=True)
class KubeSettings:
    """Kubernetes mode's flags, from flags, FLANNELD_* variables or defaults."""

    kubeconfig_file: str
    kube_api_url: str
    annotation_prefix: str
    net_config_path: str

    def store(self, prefix: str) -> Any:
        from flanneld.kube_client import KubeClient, resolve_config
        from flanneld.kube_store import KubeStore

        client = KubeClient(resolve_config(self.kube_api_url or None, self.kubeconfig_file or None))
        return KubeStore(client, etcd_prefix=prefix, net_config_path=self.net_config_path,
                         annotation_prefix=self.annotation_prefix)


def kube_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> KubeSettings | None:
    """The Kubernetes mode's settings; None in etcd mode.  A command that writes leases is a
    usage error there."""
    on = args.kube_subnet_mgr
    if on is None:
        flag_env = os.environ.get(_env_name("kube-subnet-mgr"), "")
        if flag_env.lower() not in ("", "true", "false", "1", "0"):
            parser.error(f"{_env_name('kube-subnet-mgr')}={flag_env!r}: not a boolean (true or false)")
        on = flag_env.lower() in ("true", "1")
    if not on:
        return None
    name = _command_name(args)
    if name not in _KUBE_COMMANDS:
        parser.error(f"--kube-subnet-mgr: 'flannelctl {name}' changes etcd, which Kubernetes mode "
                     "does not use (leases are the nodes' podCIDRs, published by each node's "
                     f"flanneld); only {' and '.join(repr(c) for c in _KUBE_COMMANDS)} work")
    values: dict[str, str] = {}
    for flag, (default, _) in _KUBE_FLAGS.items():
        given = getattr(args, flag.replace("-", "_"))
        env = os.environ.get(_env_name(flag))
        values[flag] = given if given is not None else env if env is not None else default
    if not values["kube-annotation-prefix"].strip("/"):
        parser.error("--kube-annotation-prefix: must not be empty")
    return KubeSettings(values["kubeconfig-file"], values["kube-api-url"],
                        values["kube-annotation-prefix"], values["net-config-path"])


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lease_id(lease_id: int) -> str:
    return f"{lease_id:016x}"  # as etcdctl prints it


def _warn(message: str) -> None:
    print(f"flannelctl: warning: {message}", file=sys.stderr)


async def _lease_policy(store: Any, prefix: str, endpoints: str,
                        subnet_len: int | None = None) -> Any:
    """The daemon's lease validation for the stored network config (None without one);
    ``subnet_len`` replaces its SubnetLen (Kubernetes mode: the podCIDRs' length)."""
    from flanneld.endpoints import etcd_addresses
    from flanneld.lease_policy import LeasePolicy
    from flanneld.netconfig import parse_network_config

    kv = await store.get(config_key(prefix))
    if kv is None:
        return None
    try:
        netconf = parse_network_config(kv.value)
    except FlannelError as exc:
        _warn(f"{exc}; leases are not checked against it")
        return None
    if not netconf.enable_ipv4:
        _warn("the network config is IPv6-only (EnableIPv4 false); leases are not checked against it")
        return None
    return LeasePolicy.build(netconf.network, subnet_len or netconf.subnet_len,
                             await etcd_addresses(endpoints),
                             ipv6_network=netconf.ipv6_network,
                             ipv6_subnet_len=netconf.ipv6_subnet_len)


async def _subnet_rows(store: Any, prefix: str, endpoints: str = "") -> list[dict[str, Any]]:
    """One row per key; ``rejected`` names the reason a daemon ignores it (as the daemon's
    lease book decides: the same policy, first holder wins), ``error`` the detail.

    Over a KubeStore (its ``node_of``: key -> node name) each row also has ``node``, node
    leases never expire (``expires_at``/``ttl_seconds`` null, ``reserved`` false), and the
    length checked is the podCIDRs' (the most common one) rather than SubnetLen."""
    from collections import Counter

    from flanneld.lease import decode_lease_attrs
    from flanneld.lease_book import LeaseBook

    snap = await store.list_prefix(subnets_prefix(prefix))
    nodes: dict[str, str] | None = getattr(store, "node_of", None)
    subnet_len = None
    if nodes is not None:
        lengths: Counter[int] = Counter()
        for kv in snap.kvs:
            try:
                lengths[parse_subnet_key(kv.key)[0].prefixlen] += 1
            except LeaseDecodeError:
                continue
        subnet_len = lengths.most_common(1)[0][0] if lengths else None
    book = LeaseBook(await _lease_policy(store, prefix, endpoints, subnet_len))
    book.load(snap.kvs, snap.revision)
    lease_ids = [] if nodes is not None else sorted({kv.lease_id for kv in snap.kvs if kv.lease_id})
    ttls = dict(zip(lease_ids, await asyncio.gather(*(store.time_to_live(i) for i in lease_ids)),
                    strict=True))
    now = time.time()
    rows: list[dict[str, Any]] = []
    for kv in snap.kvs:
        row: dict[str, Any] = {"key": kv.key, "reserved": kv.lease_id == 0, "rejected": None,
                               "ipv6_subnet": None, "public_ipv6": None}
        if nodes is not None:
            row.update(node=nodes.get(kv.key), reserved=False)
        rejection = book.rejected.get(kv.key)
        if rejection is not None:
            row.update(rejected=rejection.reason.value, error=rejection.detail)
        try:
            subnet, ipv6 = parse_subnet_key(kv.key)
            row["subnet"] = str(subnet)
            if ipv6 is not None:
                row["ipv6_subnet"] = str(ipv6)
            attrs = decode_lease_attrs(kv.value)
        except LeaseDecodeError as exc:
            row.update(subnet=row.get("subnet", kv.key.rsplit("/", 1)[-1]), error=str(exc),
                       public_ip=None, backend_type=None, backend_data=None, vtep_mac=None,
                       public_key=None, expires_at=None, ttl_seconds=None)
            rows.append(row)
            continue
        data = attrs.backend_data_obj() if attrs.backend_data else None
        ttl = ttls.get(kv.lease_id) if kv.lease_id else None
        row.update(
            public_ip=str(attrs.public_ip),
            public_ipv6=str(attrs.public_ipv6) if attrs.public_ipv6 is not None else None,
            backend_type=attrs.backend_type or "udp",
            backend_data=data,
            vtep_mac=(data or {}).get("VtepMAC"),
            public_key=_public_key(attrs.backend_type, data),
            expires_at=_iso(now + ttl) if ttl is not None and ttl >= 0 else None,
            ttl_seconds=ttl,
        )
        rows.append(row)
    rows.sort(key=_row_order)
    return rows


def _public_key(backend_type: str, data: dict[str, Any] | None) -> str | None:
    """A wireguard lease's PublicKey (what `wg show` lists as the node's peer)."""
    if backend_type.lower() != "wireguard" or not data:
        return None
    key = data.get("PublicKey")
    return key if isinstance(key, str) else None


def _row_order(row: dict[str, Any]) -> tuple[int, int, int, str]:
    """Parseable subnets in address order, then the keys that do not parse."""
    try:
        subnet = IPv4Network(row["subnet"])
    except ValueError:
        return (1, 0, 0, row["key"])
    return (0, int(subnet.network_address), subnet.prefixlen, row["key"])


def _print_table(rows: list[dict[str, Any]]) -> None:
    """One line per key.  The IPV6 SUBNET and PUBLIC IPV6 columns appear only when some key
    has an IPv6 half or a PublicIPv6, the PUBLIC KEY column only when some lease is a
    wireguard one: an IPv4 vxlan cluster's table stays as it always was (scripts that cut its
    columns keep working)."""
    dual = any(r.get("ipv6_subnet") or r.get("public_ipv6") for r in rows)
    keys = any(r.get("public_key") for r in rows)
    kube = any("node" in r for r in rows)  # Kubernetes mode: node leases, a NODE column
    headers = ["SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES", "TTL", "STATUS"]
    if keys:
        headers[4:4] = ["PUBLIC KEY"]
    if dual:
        headers[1:1] = ["IPV6 SUBNET"]
        headers[3:3] = ["PUBLIC IPV6"]
    if kube:
        headers[1:1] = ["NODE"]
    table = []
    for r in rows:
        status = f"REJECTED {r['rejected']}: {r['error']}" if r.get("rejected") else "ok"
        if r.get("public_ip") is None:
            cells = [r["subnet"], "-", "INVALID", "-", "-", "-", status]
            if keys:
                cells[4:4] = ["-"]
        else:
            if r["reserved"]:
                expires, ttl = "never", "reserved"
            else:
                expires = r["expires_at"] or "-"
                ttl = f"{r['ttl_seconds']}s" if r["ttl_seconds"] is not None else "-"
            cells = [r["subnet"], r["public_ip"], r["backend_type"], r["vtep_mac"] or "-", expires,
                     ttl, status]
            if keys:
                cells[4:4] = [r.get("public_key") or "-"]
        if dual:
            cells[1:1] = [r.get("ipv6_subnet") or "-"]
            cells[3:3] = [r.get("public_ipv6") or "-"]
        if kube:
            cells[1:1] = [r.get("node") or "-"]
        table.append(cells)
    widths = [max(len(h), *(len(str(row[i])) for row in table)) if table else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# ---- subnets reserve ------------------------------------------------------------------------------

class Refused(FlannelError):
    """The command would break something; nothing was changed."""


async def _holder(store: Any, kv: Any) -> tuple[LeaseAttrs | None, str, bool]:
    """(attributes, description, live) of whatever the key of a subnet holds."""
    from flanneld.lease import decode_lease_attrs

    try:
        attrs = decode_lease_attrs(kv.value)
    except LeaseDecodeError as exc:
        return None, f"a value the daemons cannot read ({exc})", False
    if kv.lease_id == 0:
        return attrs, (f"PublicIP {attrs.public_ip} (a reservation: no etcd lease, never "
                       "expires)"), False
    ttl = await store.time_to_live(kv.lease_id)
    if ttl < 0:
        return attrs, (f"PublicIP {attrs.public_ip} (its etcd lease {_lease_id(kv.lease_id)} has "
                       "expired)"), False
    return attrs, (f"PublicIP {attrs.public_ip}, whose etcd lease {_lease_id(kv.lease_id)} is live "
                   f"({ttl}s left)"), True


async def reserve(store: Any, prefix: str, endpoints: str, subnet: IPv4Network,
                  public_ip: IPv4Address, backend_type: str = "", force: bool = False) -> None:
    """Store a reservation of ``subnet`` for ``public_ip``; Refused (nothing changed) when the
    daemons would not use it or another PublicIP holds the subnet (unless ``force``)."""
    from flanneld.backends import backend_class
    from flanneld.endpoints import etcd_addresses
    from flanneld.lease import Lease, key_name
    from flanneld.lease_book import LeaseBook
    from flanneld.lease_policy import LeasePolicy, RejectReason
    from flanneld.netconfig import parse_network_config

    what = f"refusing to reserve {subnet} for {public_ip}"
    kv = await store.get(config_key(prefix))
    if kv is None:
        raise Refused(f"{what}: no network config at {config_key(prefix)}; a reservation is "
                      "checked against it: store one first (flannelctl config set FILE)")
    try:
        netconf = parse_network_config(kv.value)
    except FlannelError as exc:
        raise Refused(f"{what}: the stored {exc}; fix it first (flannelctl config set FILE)") from None
    if not netconf.enable_ipv4:
        raise Refused(f"{what}: the stored network config is IPv6-only (EnableIPv4 false): it has "
                      "no IPv4 subnets to reserve")
    btype = (backend_type or netconf.backend.type).lower()
    try:
        backend_class(btype)
    except FlannelError as exc:
        source = "--backend-type" if backend_type else "the network config's Backend.Type"
        raise Refused(f"{what}: {source}: {exc}") from None
    if btype != netconf.backend.type:
        _warn(f"backend type {btype} differs from the network config's {netconf.backend.type}: "
              f"nodes of {netconf.backend.type} do not route to a {btype} node")
    attrs = LeaseAttrs(public_ip, backend_type="" if btype == "udp" else btype)  # Go's udp: none

    policy = LeasePolicy.build(netconf.network, netconf.subnet_len, await etcd_addresses(endpoints),
                               ipv6_network=netconf.ipv6_network,
                               ipv6_subnet_len=netconf.ipv6_subnet_len)
    verdict = policy.check(Lease(subnet, attrs))
    # A fresh vxlan reservation has no VtepMAC yet: its node writes one when it takes it.
    if verdict is not None and verdict[0] is not RejectReason.BAD_BACKEND_DATA:
        raise Refused(f"{what}: the daemons would ignore it ({verdict[0].value}: {verdict[1]})")
    if not netconf.contains_subnet(subnet):
        raise Refused(f"{what}: it lies outside SubnetMin {netconf.subnet_min} .. SubnetMax "
                      f"{netconf.subnet_max} of the network config: the node with PublicIP "
                      f"{public_ip} would delete the reservation when it starts")

    key = subnets_prefix(prefix) + subnet_key(subnet)
    snap = await store.list_prefix(subnets_prefix(prefix))
    book = LeaseBook(policy)
    book.load(snap.kvs, snap.revision)
    for other_subnet, lease in book.accepted.items():
        holder_key = book.key_of(other_subnet)
        if holder_key != key and overlaps(other_subnet, subnet):
            raise Refused(
                f"{what}: it would overlap the lease of key {key_name(holder_key or '')} (PublicIP "
                f"{lease.attrs.public_ip}), which the daemons keep (the first holder wins); "
                "release that key first (--force does not replace another key)")
    for rejection in book.rejected.values():
        if rejection.lease is not None and rejection.key != key and overlaps(rejection.lease.subnet, subnet):
            _warn(f"key {rejection.name} overlaps {subnet}; the daemons ignore it "
                  f"({rejection.reason.value}: {rejection.detail})")
    elsewhere = sorted(str(lease.subnet) for lease in book.accepted.values()
                       if lease.attrs.public_ip == public_ip and lease.subnet != subnet)
    if elsewhere:
        _warn(f"PublicIP {public_ip} also holds {', '.join(elsewhere)}: a node uses one lease; "
              "release the other one so that the node takes this reservation when it restarts")

    value = attrs.to_json().encode()
    existing = next((k for k in snap.kvs if k.key == key), None)
    if existing is None:
        if await store.create(key, value, 0) is None:
            raise Refused(f"{what}: the key {key} was written meanwhile; nothing changed: run "
                          "the command again")
        print(f"reserved {subnet} for {public_ip}", file=sys.stderr)
        _vtep_note(verdict, public_ip)
        return

    current, described, live = await _holder(store, existing)
    if current is not None and current.public_ip == public_ip:
        if existing.lease_id == 0:
            print(f"{subnet} is already reserved for {public_ip}; nothing changed", file=sys.stderr)
            return
        # The node's own lease: keep its value (BackendData, VtepMAC), drop its etcd lease.
        if await store.update(key, existing.value, 0, existing.mod_revision) is None:
            raise Refused(f"{what}: the key {key} changed meanwhile; nothing changed: run the "
                          "command again")
        print(f"reserved {subnet} for {public_ip}: its lease ({described}) is now a reservation "
              "with the same value; restart flanneld on that node so that it takes the "
              "reservation (a running one re-attaches an etcd lease at its next renewal)",
              file=sys.stderr)
        return
    if not force:
        holds = "leased by" if live else "held by"
        consequence = (": that node is using it, and overwriting it would cut its pods off the "
                       "network" if live else "")
        would = ("overwrite the key with the reservation and revoke that etcd lease, so that "
                 "the node gives the subnet up (its pods lose the network until they are "
                 "re-created)" if live else "overwrite it")
        raise Refused(f"{what}: it is {holds} {described}{consequence}.  --force would {would}.")
    if await store.update(key, value, 0, existing.mod_revision) is None:
        raise Refused(f"{what}: the key {key} changed meanwhile; nothing changed: run the command "
                      "again")
    old = existing.value.decode(errors="replace")
    done = f"reserved {subnet} for {public_ip}: overwrote the holder, {described} (old value: {old[:300]})"
    if existing.lease_id:
        await store.revoke(existing.lease_id)
        if await store.time_to_live(existing.lease_id) < 0:
            done += f"; revoked etcd lease {_lease_id(existing.lease_id)}"
            if live:
                done += ": that node gives the subnet up"
        else:
            done += (f"; could not revoke etcd lease {_lease_id(existing.lease_id)} (it runs out "
                     "by its TTL)")
        # Between our write and the revoke, a live holder may have written its lease back
        # (then the revoke deleted the key with it): say so rather than claim success.
        now = await store.get(key)
        if now is None or now.value != value or now.lease_id != 0:
            _, after, _ = await _holder(store, now) if now is not None else (None, "nothing", False)
            raise FlannelError(f"{done}; but the holder wrote its lease back meanwhile and the key "
                          f"now holds {after}: run the command again")
    print(f"flannelctl: {done}", file=sys.stderr)
    _vtep_note(verdict, public_ip)


def _vtep_note(verdict: Any, public_ip: IPv4Address) -> None:
    if verdict is not None:
        print(f"note: the daemons leave it unused until the node with PublicIP {public_ip} takes "
              f"it and writes its own data ({verdict[1]})", file=sys.stderr)


async def release(store: Any, prefix: str, subnet: IPv4Network) -> int:
    """Delete the key of ``subnet``: ``a.b.c.d-len``, or a dual-stack key whose IPv4 half it
    is (``a.b.c.d-len&<ipv6>-len``); 1 when there is none."""
    from flanneld.lease import key_name

    key = subnets_prefix(prefix) + subnet_key(subnet)
    deleted = [key] if await store.delete(key) else []
    for kv in (await store.list_prefix(subnets_prefix(prefix))).kvs:
        try:
            v4, v6 = parse_subnet_key(kv.key)
        except LeaseDecodeError:
            continue
        if v4 == subnet and v6 is not None and await store.delete(kv.key):
            deleted.append(kv.key)
    if not deleted:
        print(f"flannelctl: no lease or reservation for {subnet}", file=sys.stderr)
        return 1
    if deleted == [key]:
        print(f"released {subnet}", file=sys.stderr)
    else:
        print(f"released {subnet} (key {', '.join(key_name(k) for k in deleted)})", file=sys.stderr)
    return 0


# ---- config set -----------------------------------------------------------------------------------

def _not_json(value: Any) -> Any:
    raise FlannelError(f"{value!r} ({type(value).__name__}) is not a JSON value: quote it in YAML")


def load_config_file(path: str) -> tuple[bytes, dict[str, Any]]:
    """The compact JSON to store and the object it holds; FlannelError says what is wrong
    (syntax errors with line and column, unknown keys with a suggestion).  Warnings (unknown
    keys of a valid config) go to stderr."""
    import yaml

    from flanneld.backends import backend_class
    from flanneld.errors import NetworkConfigError
    from flanneld.netconfig import (
        UNSUPPORTED_FIELD,
        json_syntax_error,
        parse_network_config,
        unknown_field_hints,
        unsupported_reason,
    )

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise FlannelError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FlannelError(f"{path}: not UTF-8 text: {exc}") from None
    if text.lstrip("\ufeff \t\r\n").startswith("{"):
        try:
            obj = json.loads(text.lstrip("\ufeff"))
        except json.JSONDecodeError as exc:
            raise FlannelError(f"{path}: {json_syntax_error(exc)}") from None
        except RecursionError:
            raise FlannelError(f"{path}: JSON nested too deeply") from None
    else:
        try:
            obj = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise FlannelError(f"{path}: YAML syntax error{where}: {exc.problem or exc}") from None
        except yaml.YAMLError as exc:
            raise FlannelError(f"{path}: neither JSON nor YAML: {exc}") from None
    if not isinstance(obj, dict):
        raise FlannelError(f"{path}: the network config must be a mapping/object, got "
                           f"{type(obj).__name__}")
    hints = unknown_field_hints(obj)
    try:
        for name, value in obj.items():
            try:
                json.dumps(value, default=_not_json)
            except FlannelError as exc:
                raise FlannelError(f"{path}: {name}: {exc}") from None
        raw = json.dumps(obj, separators=(",", ":"), default=_not_json).encode()
    except (TypeError, ValueError) as exc:
        raise FlannelError(f"{path}: cannot be written as JSON: {exc}") from None
    try:
        netconf = parse_network_config(raw)
        reason = unsupported_reason(netconf)
        if reason is not None:
            raise NetworkConfigError(UNSUPPORTED_FIELD, reason)
        backend_class(netconf.backend.type).validate_options(netconf.backend.options)
    except FlannelError as exc:
        raise FlannelError("; ".join([str(exc), *hints])) from None
    for hint in hints:
        _warn(f"{hint}: the daemons ignore it (as Go flanneld does)")
    return raw, obj


def _pretty(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _stored_text(raw: bytes | None) -> str:
    if raw is None:
        return ""
    try:
        return _pretty(json.loads(raw))
    except ValueError:
        text = raw.decode(errors="replace")
        return text if text.endswith("\n") else text + "\n"


async def set_config(store: Any, prefix: str, path: str, raw: bytes, obj: dict[str, Any],
                     dry_run: bool) -> None:
    key = config_key(prefix)
    kv = await store.get(key)
    old, new = _stored_text(kv.value if kv else None), _pretty(obj)
    if dry_run:
        sys.stdout.writelines(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            fromfile=f"{key} (stored)" if kv else f"{key} (nothing stored)",
            tofile=f"{path} (would be stored)"))
        same = " (no change)" if old == new else ""
        print(f"dry run: nothing stored{same}", file=sys.stderr)
        return
    if kv is not None and old == new:
        print(f"the network config at {key} is already this one; nothing stored", file=sys.stderr)
        return
    await store.put(key, raw, 0)
    print(f"network config stored at {key}.  Running flanneld daemons read the network config "
          "only at start (as Go flanneld does): restart them to use it.", file=sys.stderr)


# ---- main -----------------------------------------------------------------------------------------

async def _run(args: argparse.Namespace, etcd: EtcdSettings, kube: KubeSettings | None = None) -> int:
    prefix = etcd.prefix
    if args.command == "config" and args.action == "set":
        raw, obj = load_config_file(args.file)
    store = etcd.store() if kube is None else kube.store(prefix)
    try:
        if args.command == "subnets":
            if args.action == "reserve":
                await reserve(store, prefix, etcd.endpoints, args.subnet, args.public_ip,
                              args.backend_type, args.force)
                return 0
            if args.action == "release":
                return await release(store, prefix, args.subnet)
            endpoints = etcd.endpoints if kube is None else store.client.config.server
            rows = await _subnet_rows(store, prefix, endpoints)
            if args.output == "json":
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows)
            return 0
        if args.command == "config":
            if args.action == "set":
                await set_config(store, prefix, args.file, raw, obj, args.dry_run)
                return 0
            kv = await store.get(config_key(prefix))
            if kv is None:
                where = config_key(prefix) if kube is None else kube.net_config_path
                print(f"flannelctl: no network config at {where}", file=sys.stderr)
                return 1
            try:
                stored = json.loads(kv.value)
            except ValueError as exc:
                print(f"flannelctl: {config_key(prefix)} is not JSON ({exc}):", file=sys.stderr)
                sys.stdout.write(kv.value.decode(errors="replace"))
                return 1
            if args.output == "yaml":
                import yaml

                print(yaml.safe_dump(stored, sort_keys=False), end="")
            else:
                print(json.dumps(stored, indent=2))
            return 0
    finally:
        await store.close()
    return 2


def docker_opts(subnet_file: str) -> int:
    from ipaddress import IPv4Interface, IPv6Interface, IPv6Network

    from flanneld.subnet_env import SubnetEnv, parse_subnet_env, render_docker_opts

    try:
        with open(subnet_file, encoding="utf-8") as fh:
            values = parse_subnet_env(fh.read())
        network = subnet = ipv6_network = ipv6_subnet = None
        if "FLANNEL_SUBNET" in values or "FLANNEL_IPV6_SUBNET" not in values:
            subnet = IPv4Interface(values["FLANNEL_SUBNET"]).network
            network = IPv4Network(values["FLANNEL_NETWORK"])
        if "FLANNEL_IPV6_SUBNET" in values:
            ipv6_subnet = IPv6Interface(values["FLANNEL_IPV6_SUBNET"]).network
            ipv6_network = IPv6Network(values["FLANNEL_IPV6_NETWORK"])
        env = SubnetEnv(
            network=network,
            subnet=subnet,
            mtu=int(values["FLANNEL_MTU"]),
            ipmasq=values.get("FLANNEL_IPMASQ", "false") == "true",
            ipv6_network=ipv6_network,
            ipv6_subnet=ipv6_subnet,
        )
    except OSError as exc:
        print(f"flannelctl: {subnet_file}: {exc.strerror}", file=sys.stderr)
        return 1
    except (KeyError, ValueError) as exc:
        print(f"flannelctl: {subnet_file}: incomplete or invalid ({exc})", file=sys.stderr)
        return 1
    sys.stdout.write(render_docker_opts(env))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _resolve_output(parser, args)
    if args.command == "docker-opts":
        return docker_opts(args.subnet_file)
    etcd = etcd_settings(parser, args)
    kube = kube_settings(parser, args)
    try:
        return asyncio.run(_run(args, etcd, kube))
    except ConfigError as exc:  # e.g. an unreadable --etcd-cafile: a bad flag value
        print(f"flannelctl: error: {exc}", file=sys.stderr)
        return 2
    except (FlannelError, ValueError, OSError) as exc:
        print(f"flannelctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
