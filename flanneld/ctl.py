"""`flannelctl`: look at and change what flannel keeps in etcd.

    flannelctl subnets [-o table|json]              every key: leases, reservations, rejected
    flannelctl subnets reserve SUBNET --public-ip IP
    flannelctl subnets release SUBNET
    flannelctl config get [-o json|yaml]
    flannelctl config set FILE                      YAML or JSON, validated like the daemon does
    flannelctl docker-opts [--subnet-file F]        mk-docker-opts.sh output for this node

Reads the same etcd flags and FLANNELD_* environment variables as flanneld.  Data goes to
stdout, messages to stderr; exit 1 on failure, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flanneld import __version__
from flanneld.errors import FlannelError, LeaseDecodeError
from flanneld.lease import LeaseAttrs, config_key, parse_subnet_key, subnets_prefix

_ETCD_FLAGS = {
    "etcd-endpoints": "http://127.0.0.1:2379",
    "etcd-prefix": "/coreos.com/network",
    "etcd-certfile": "",
    "etcd-keyfile": "",
    "etcd-cafile": "",
    "etcd-username": "",
    "etcd-password": "",
    "etcd-timeout": "5",
}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flannelctl", description="Inspect and change flannel's state in etcd."
    )
    parser.add_argument("--version", action="version", version=f"flannelctl {__version__}")
    for flag, default in _ETCD_FLAGS.items():
        env = "FLANNELD_" + flag.replace("-", "_").upper()
        parser.add_argument(f"--{flag}", default=None, help=f"(default {default!r}; env {env})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    subnets = sub.add_parser("subnets", help="list leases; reserve or release subnets")
    subnets.add_argument("-o", "--output", choices=("table", "json"), default="table")
    subnets_sub = subnets.add_subparsers(dest="action", metavar="ACTION")
    reserve = subnets_sub.add_parser("reserve", help="reserve SUBNET for a node (never expires)")
    reserve.add_argument("subnet", type=_subnet_arg)
    reserve.add_argument("--public-ip", required=True, type=_ip_arg)
    reserve.add_argument("--backend-type", default="")
    release = subnets_sub.add_parser("release", help="delete the lease or reservation of SUBNET")
    release.add_argument("subnet", type=_subnet_arg)

    config = sub.add_parser("config", help="read or write the network config")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = config_sub.add_parser("get", help="print the network config")
    get.add_argument("-o", "--output", choices=("json", "yaml"), default="json")
    put = config_sub.add_parser("set", help="validate FILE (YAML or JSON) and store it")
    put.add_argument("file", help="path, or - for stdin")

    docker = sub.add_parser("docker-opts", help="print docker options from subnet.env")
    docker.add_argument("--subnet-file", default=os.environ.get("FLANNELD_SUBNET_FILE",
                                                                "/run/flannel/subnet.env"))
    return parser


def _setting(args: argparse.Namespace, flag: str) -> str:
    value = getattr(args, flag.replace("-", "_"))
    if value is not None:
        return str(value)
    return os.environ.get("FLANNELD_" + flag.replace("-", "_").upper(), _ETCD_FLAGS[flag])


def _store(args: argparse.Namespace) -> Any:
    from flanneld.config import DaemonConfig, validate
    from flanneld.etcd_store import EtcdStore, TLSFiles, parse_endpoints

    cfg = DaemonConfig(
        etcd_endpoints=_setting(args, "etcd-endpoints"),
        etcd_cafile=_setting(args, "etcd-cafile"),
        etcd_certfile=_setting(args, "etcd-certfile"),
        etcd_keyfile=_setting(args, "etcd-keyfile"),
        etcd_username=_setting(args, "etcd-username"),
        etcd_password=_setting(args, "etcd-password"),
    )
    validate(cfg)
    tls = TLSFiles(cfg.etcd_cafile, cfg.etcd_certfile, cfg.etcd_keyfile) if cfg.etcd_cafile else None
    return EtcdStore(
        parse_endpoints(cfg.etcd_endpoints),
        timeout=float(_setting(args, "etcd-timeout")),
        tls=tls,
        username=cfg.etcd_username or None,
        password=cfg.etcd_password or None,
    )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _lease_policy(store: Any, prefix: str, endpoints: str) -> Any:
    """The daemon's lease validation for the stored network config (None without one)."""
    from flanneld.endpoints import etcd_addresses
    from flanneld.lease_policy import LeasePolicy
    from flanneld.netconfig import parse_network_config

    kv = await store.get(config_key(prefix))
    if kv is None:
        return None
    try:
        netconf = parse_network_config(kv.value)
    except FlannelError as exc:
        print(f"flannelctl: warning: {exc}; leases are not checked against it", file=sys.stderr)
        return None
    return LeasePolicy.build(netconf.network, netconf.subnet_len, await etcd_addresses(endpoints))


async def _subnet_rows(store: Any, prefix: str, endpoints: str = "") -> list[dict[str, Any]]:
    """One row per key; ``rejected`` names the reason a daemon ignores it (as the daemon's
    lease book decides: the same policy, first holder wins), ``error`` the detail."""
    from flanneld.lease import decode_lease_attrs
    from flanneld.lease_book import LeaseBook

    snap = await store.list_prefix(subnets_prefix(prefix))
    book = LeaseBook(await _lease_policy(store, prefix, endpoints))
    book.load(snap.kvs, snap.revision)
    lease_ids = sorted({kv.lease_id for kv in snap.kvs if kv.lease_id})
    ttls = dict(zip(lease_ids, await asyncio.gather(*(store.time_to_live(i) for i in lease_ids)),
                    strict=True))
    now = time.time()
    rows: list[dict[str, Any]] = []
    for kv in snap.kvs:
        row: dict[str, Any] = {"key": kv.key, "reserved": kv.lease_id == 0, "rejected": None}
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
                       expires_at=None, ttl_seconds=None)
            rows.append(row)
            continue
        data = attrs.backend_data_obj() if attrs.backend_data else None
        ttl = ttls.get(kv.lease_id) if kv.lease_id else None
        row.update(
            public_ip=str(attrs.public_ip),
            backend_type=attrs.backend_type or "udp",
            backend_data=data,
            vtep_mac=(data or {}).get("VtepMAC"),
            expires_at=_iso(now + ttl) if ttl is not None and ttl >= 0 else None,
            ttl_seconds=ttl,
        )
        rows.append(row)
    rows.sort(key=_row_order)
    return rows


def _row_order(row: dict[str, Any]) -> tuple[int, int, int, str]:
    """Parseable subnets in address order, then the keys that do not parse."""
    try:
        subnet = IPv4Network(row["subnet"])
    except ValueError:
        return (1, 0, 0, row["key"])
    return (0, int(subnet.network_address), subnet.prefixlen, row["key"])


def _print_table(rows: list[dict[str, Any]]) -> None:
    headers = ["SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES", "TTL", "STATUS"]
    table = []
    for r in rows:
        status = f"REJECTED {r['rejected']}: {r['error']}" if r.get("rejected") else "ok"
        if r.get("public_ip") is None:
            table.append([r["subnet"], "-", "INVALID", "-", "-", "-", status])
            continue
        if r["reserved"]:
            expires, ttl = "never", "reserved"
        else:
            expires = r["expires_at"] or "-"
            ttl = f"{r['ttl_seconds']}s" if r["ttl_seconds"] is not None else "-"
        table.append([r["subnet"], r["public_ip"], r["backend_type"], r["vtep_mac"] or "-", expires, ttl,
                      status])
    widths = [max(len(h), *(len(str(row[i])) for row in table)) if table else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _read_config_file(path: str) -> bytes:
    import yaml

    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FlannelError(f"{path}: neither JSON nor YAML: {exc}") from None
    if not isinstance(obj, dict):
        raise FlannelError(f"{path}: the network config must be a mapping/object")
    return json.dumps(obj, separators=(",", ":")).encode()


async def _run(args: argparse.Namespace) -> int:
    from flanneld.backends import backend_class
    from flanneld.netconfig import parse_network_config

    prefix = _setting(args, "etcd-prefix")
    if args.command == "config" and args.action == "set":
        raw = _read_config_file(args.file)
        netconf = parse_network_config(raw)
        backend_class(netconf.backend.type).validate_options(netconf.backend.options)
    store = _store(args)
    try:
        if args.command == "subnets":
            if args.action == "reserve":
                subnet = args.subnet
                attrs = LeaseAttrs(args.public_ip, backend_type=args.backend_type)
                key = subnets_prefix(prefix) + f"{subnet.network_address}-{subnet.prefixlen}"
                await store.put(key, attrs.to_json().encode(), 0)
                print(f"reserved {subnet} for {args.public_ip}", file=sys.stderr)
                return 0
            if args.action == "release":
                subnet = args.subnet
                key = subnets_prefix(prefix) + f"{subnet.network_address}-{subnet.prefixlen}"
                if not await store.delete(key):
                    print(f"flannelctl: no lease or reservation for {subnet}", file=sys.stderr)
                    return 1
                print(f"released {subnet}", file=sys.stderr)
                return 0
            rows = await _subnet_rows(store, prefix, _setting(args, "etcd-endpoints"))
            if args.output == "json":
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows)
            return 0
        if args.command == "config":
            if args.action == "set":
                await store.put(config_key(prefix), raw, 0)
                print(f"network config stored at {config_key(prefix)}", file=sys.stderr)
                return 0
            kv = await store.get(config_key(prefix))
            if kv is None:
                print(f"flannelctl: no network config at {config_key(prefix)}", file=sys.stderr)
                return 1
            obj = json.loads(kv.value)
            if args.output == "yaml":
                import yaml

                print(yaml.safe_dump(obj, sort_keys=False), end="")
            else:
                print(json.dumps(obj, indent=2))
            return 0
    finally:
        await store.close()
    return 2


def docker_opts(subnet_file: str) -> int:
    from ipaddress import IPv4Interface

    from flanneld.subnet_env import SubnetEnv, parse_subnet_env, render_docker_opts

    try:
        with open(subnet_file, encoding="utf-8") as fh:
            values = parse_subnet_env(fh.read())
        iface = IPv4Interface(values["FLANNEL_SUBNET"])
        env = SubnetEnv(
            network=IPv4Network(values["FLANNEL_NETWORK"]),
            subnet=iface.network,
            mtu=int(values["FLANNEL_MTU"]),
            ipmasq=values.get("FLANNEL_IPMASQ", "false") == "true",
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
    args = build_parser().parse_args(argv)
    if args.command == "docker-opts":
        return docker_opts(args.subnet_file)
    try:
        return asyncio.run(_run(args))
    except (FlannelError, ValueError, OSError) as exc:
        print(f"flannelctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
