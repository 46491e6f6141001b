"""`flanneld` entry point: flags -> config -> daemon; exit codes and logging set-up.

Exit codes: 0 after SIGTERM/SIGINT, 1 on a fatal runtime error, 2 on usage or config errors.
Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from flanneld.backends.base import ExternalInterface
from flanneld.config import DaemonConfig, build_config
from flanneld.errors import ConfigError, FlannelError

log = logging.getLogger("flanneld")


def make_store(config: DaemonConfig, observer: object = None):  # type: ignore[no-untyped-def]
    from flanneld.etcd_store import EtcdStore, TLSFiles, parse_endpoints

    tls = None
    if config.etcd_cafile:
        tls = TLSFiles(config.etcd_cafile, config.etcd_certfile, config.etcd_keyfile)
    return EtcdStore(
        parse_endpoints(config.etcd_endpoints),
        timeout=config.etcd_timeout,
        tls=tls,
        username=config.etcd_username or None,
        password=config.etcd_password or None,
        observer=observer,  # type: ignore[arg-type]
    )


async def resolve_interface(config: DaemonConfig, ipv6: bool = False) -> ExternalInterface:
    from flanneld.iface import select_external_interface
    from flanneld.netlink import Netlink

    async with Netlink() as netlink:
        return await select_external_interface(
            netlink,
            iface=config.iface,
            iface_regex=config.iface_regex,
            can_reach=IPv4Address(config.iface_can_reach) if config.iface_can_reach else None,
            public_ip=IPv4Address(config.public_ip) if config.public_ip else None,
            ipv6=ipv6,
            public_ipv6=IPv6Address(config.public_ipv6) if config.public_ipv6 else None,
        )


async def _run(config: DaemonConfig) -> int:
    from flanneld.daemon import Daemon

    daemon: Daemon | None = None

    def observe(op: str, result: str, seconds: float) -> None:
        if daemon is not None:
            daemon.observe_store(op, result, seconds)

    if config.kube_subnet_mgr:
        from flanneld.kube_client import KubeClient, resolve_config
        from flanneld.kube_store import KubeStore
        from flanneld.kube_subnet_manager import KubeSubnetManager, node_identity

        client = KubeClient(resolve_config(config.kube_api_url or None,
                                           config.kubeconfig_file or None))
        try:
            node = await node_identity(client)
        except BaseException:
            await client.close()
            raise
        kube = KubeStore(client, etcd_prefix=config.etcd_prefix,
                         net_config_path=config.net_config_path,
                         annotation_prefix=config.kube_annotation_prefix, observer=observe)
        manager = KubeSubnetManager(kube, node, prefix=config.etcd_prefix,
                                    set_network_unavailable=config.set_node_network_unavailable)
        log.info("kube subnet manager: node %s, apiserver %s", node, client.config.describe())
        daemon = Daemon(config, kube, resolve_interface, freeze_gc=True,
                        manager=manager, store_endpoints=client.config.server)
        manager.report = daemon.readiness.set_detail  # a failing API call is shown on /readyz
        return await daemon.run()
    store = make_store(config, observe)
    daemon = Daemon(config, store, resolve_interface, freeze_gc=True)
    return await daemon.run()


def setup_logging(config: DaemonConfig) -> None:
    from flanneld.logging_setup import setup_logging as install
    from flanneld.logging_setup import warn_ignored_flags

    install(config.verbose, json_format=config.log_format == "json")
    warn_ignored_flags(config.ignored_flags)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = build_config(args, os.environ)
    except ConfigError as exc:
        print(f"flanneld: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    try:
        return asyncio.run(_run(config))
    except ConfigError as exc:
        log.critical("%s", exc)
        return 2
    except FlannelError as exc:
        log.critical("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
