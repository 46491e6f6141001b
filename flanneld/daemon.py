"""The flanneld main loop: lease a subnet, publish it, program the backend, follow the peers.

Tasks (each named, each kept by the daemon so none is garbage-collected mid-flight):
- lease keeper: renews at expiry minus the margin; on loss re-acquires (same subnet if free)
  and never exits (Go flanneld exits 0 here, which Restart=on-failure never restarts);
- watcher: etcd events -> the lease book -> pending changes, then wakes the reconciler;
- reconciler: the only caller of the backend's network: ``apply(changes)`` on every wake-up,
  ``repair(leases)`` (the full pass: start-up, drift repair) every ``--drift-interval`` in a
  task of its own, so that events go first; on a move to another subnet it retires the
  network and registers a new one;
- health listener, systemd watchdog, masquerade rules.
Shutdown leaves the datapath in place so pods keep talking while the daemon restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from ipaddress import IPv4Network
from typing import Any

from flanneld import __version__
from flanneld.atomic import check_writable_path
from flanneld.backends import backend_class
from flanneld.backends.base import Backend, BackendContext, ExternalInterface, Network
from flanneld.backoff import retry, wait_or_stop
from flanneld.config import DaemonConfig
from flanneld.config_watch import ConfigWatcher
from flanneld.endpoints import etcd_addresses
from flanneld.errors import (
    ConfigError,
    FlannelError,
    LeaseDecodeError,
    StoreUnavailableError,
)
from flanneld.health import HealthServer, Readiness
from flanneld.lease import Lease, LeaseAttrs, config_key, parse_subnet_key
from flanneld.lease_book import LeaseBook, LeaseEvent, LeaseEventKind
from flanneld.lease_keeper import KeeperHooks, LeaseKeeper
from flanneld.lease_policy import REJECT_REASONS, LeasePolicy, Rejection
from flanneld.lease_watch import LeaseWatcher
from flanneld.logging_setup import log_event
from flanneld.masq import MasqConfig, MasqError, MasqRules, make_masq_rules
from flanneld.metrics import Metrics, subnet_pool_usage
from flanneld.netconfig import NetworkConfig
from flanneld.rejection_log import RejectionLog
from flanneld.sdnotify import Notifier, start_watchdog, stop_watchdog
from flanneld.store import LeaseStore
from flanneld.store_health import StoreHealth
from flanneld.subnet_env import SubnetEnv, previous_subnets, write_docker_opts, write_subnet_env
from flanneld.subnet_manager import SubnetManager

log = logging.getLogger("flanneld")


class StartupError(FlannelError):
    """Start-up cannot go on (a busy port, missing privileges)."""


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff in /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0

# (config, whether the network has IPv6) -> the external interface.
InterfaceResolver = Callable[[DaemonConfig, bool], Awaitable[ExternalInterface]]


class Daemon:
    watcher: LeaseWatcher  # set at the end of start()
    def __init__(
        self,
        config: DaemonConfig,
        store: LeaseStore,
        resolve_interface: InterfaceResolver,
        *,
        notifier: Notifier | None = None,
        freeze_gc: bool = False,
        manager: SubnetManager | None = None,
        store_endpoints: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.resolve_interface = resolve_interface
        # The etcd subnet manager, or the kube one (--kube-subnet-mgr: the same interface).
        self.manager = manager if manager is not None else SubnetManager(
            store, config.etcd_prefix, ttl=config.subnet_lease_ttl)
        # The store's addresses, which no peer's subnet may cover (etcd's, or the apiserver's).
        self.store_endpoints = store_endpoints if store_endpoints is not None \
            else config.etcd_endpoints
        self.metrics = Metrics(backend="unknown", per_peer=config.metrics_per_peer)
        self.readiness = Readiness()
        self.notifier = notifier or Notifier.from_env()
        self.notifier.follow_readiness(self.readiness)
        self.readiness.add_listener(lambda ready, reason: self.metrics.set_ready(ready))
        self.stopping = asyncio.Event()
        self.keeper: LeaseKeeper | None = None
        self.attrs: LeaseAttrs | None = None
        self.netconf: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.network: Network | None = None  # the backend's network for our lease
        # Leases changed since the last pass (None: gone), for Network.apply.
        self._changes: dict[IPv4Network, Lease | None] = {}
        self._next_full = 0.0  # when the next repair (full pass) is due
        self._dirty = asyncio.Event()
        self._files_pending = asyncio.Event()  # a state file still has to be (re)written
        self._file_error: str | None = None
        self.store_health = StoreHealth(config.etcd_unreachable_not_ready)
        self.rejections = RejectionLog(logging.getLogger("flanneld.leases"))
        self.book: LeaseBook | None = None
        self._pool_seen, self._pool_next = -1, 0.0
        self._tasks: list[asyncio.Task[Any]] = []
        # Masquerade/forward rules per family (IPv4, and IPv6 in dual stack).
        self.masqs: dict[int, MasqRules] = {}
        self.exit_code = 0  # 1 when a task died; 0 after SIGTERM/SIGINT
        self.freeze_gc = freeze_gc

    @property
    def lease(self) -> Lease | None:
        """The node's own lease (held by the lease keeper)."""
        return self.keeper.lease if self.keeper is not None else None

    async def _lease_moved(self, new: Lease, old: Lease) -> None:
        """The lease keeper re-acquired another subnet: reprogram what depends on it (the
        reconciler moves the network: see ``_move_network``)."""
        self._publish_lease_info(new)
        await self._program_masq()
        self._write_files()
        self._dirty.set()

    async def _move_network(self, lease: Lease) -> None:
        """Retire the old lease's network, register one for ``lease``; its repair is due."""
        assert self.backend is not None and self.network is not None
        old = self.network
        log_event(log, "moving the network", old=old.lease.subnet, new=lease.subnet)
        await old.retire()
        backend = self.backend
        self.network = await self._retry(f"programming the lease {lease.subnet}",
                                         lambda: backend.register_network(lease))
        self._next_full = 0.0

    def _publish_lease_info(self, lease: Lease) -> None:
        assert self.netconf is not None
        self.metrics.set_lease_info(str(lease.subnet), str(lease.attrs.public_ip),
                                    self.netconf.backend.type)

    POOL_INTERVAL = 10.0  # seconds between counts of the subnet pool (O(keys) each)

    def _pool_usage(self) -> None:
        """flannel_subnets_leased / _capacity: every key whose name parses holds its subnet
        for the allocator, accepted or not.  Counted again only when the book changed, and at
        most every POOL_INTERVAL (10,000 junk keys must not cost CPU every second)."""
        if self.book is None or self.netconf is None:
            return
        now = time.monotonic()
        if self.book.version == self._pool_seen or now < self._pool_next:
            return
        self._pool_seen, self._pool_next = self.book.version, now + self.POOL_INTERVAL
        subnets = list(self.book.accepted)
        for key in self.book.rejected:
            with contextlib.suppress(LeaseDecodeError):
                subnets.append(parse_subnet_key(key)[0])
        self.metrics.set_subnet_pool(*subnet_pool_usage(self.netconf, subnets))

    # -- helpers -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("task %s died: %r; stopping", task.get_name(), exc, exc_info=exc)
            self.exit_code = 1
            self.stopping.set()

    async def _retry(self, what: str, fn: Callable[[], Awaitable[Any]], cap: float = 10.0,
                     give_up_after: float | None = None) -> Any:
        """``backoff.retry`` until the daemon stops."""
        return await retry(what, fn, stopping=self.stopping, cap=cap, give_up_after=give_up_after)

    def _subnet_env(self) -> SubnetEnv:
        assert self.lease is not None and self.netconf is not None and self.backend is not None
        v6 = self.netconf.enable_ipv6 and self.lease.ipv6_subnet is not None
        return SubnetEnv(
            network=self.netconf.network,
            subnet=self.lease.subnet,
            mtu=self.backend.mtu(),
            ipmasq=self.config.ip_masq,
            ipv6_network=self.netconf.ipv6_network if v6 else None,
            ipv6_subnet=self.lease.ipv6_subnet if v6 else None,
        )

    def _write_files(self) -> None:
        """Write subnet.env (and the docker options and CNI conflist when asked for).

        Never raises: a full or read-only file system must not stop the daemon (Go warns and
        carries on; it also used to die here after a re-acquire, orphaning the new lease).
        On failure /readyz says why, ``flannel_file_written`` is 0, one line is logged per
        change of the error, and ``_keep_files`` retries.
        """
        env = self._subnet_env()
        writes: list[tuple[str, str, Callable[[], object]]] = [
            ("subnet_env", self.config.subnet_file,
             lambda: write_subnet_env(self.config.subnet_file, env))]
        if self.config.docker_opts_file:
            writes.append(("docker_opts", self.config.docker_opts_file,
                           lambda: write_docker_opts(self.config.docker_opts_file, env)))
        if self.config.cni_conf_file:
            from flanneld.cni.conflist import write_conflist

            writes.append(("cni_conf", self.config.cni_conf_file,
                           lambda: write_conflist(self.config.cni_conf_file)))
        error: str | None = None
        for name, path, write in writes:
            try:
                write()
            except OSError as exc:
                self.metrics.file_written(name, False)
                error = error or f"{path}: {exc.strerror or exc}"
                if name == "subnet_env":
                    self.readiness.set_subnet_file_written(False, error)
            else:
                self.metrics.file_written(name, True)
                if name == "subnet_env":
                    self.readiness.set_subnet_file_written(True)
        if error != self._file_error:
            if error is not None:
                log.error("writing state files failed: %s; the datapath is up, retrying every "
                          "%.0fs (/readyz reports it)", error, self.FILE_RETRY)
            else:
                log.warning("state files written after earlier failures")
            self._file_error = error
        if error is None:
            self._files_pending.clear()
        else:
            self._files_pending.set()

    FILE_RETRY = 5.0

    async def _keep_files(self) -> None:
        """Retry state files that could not be written (e.g. the disk was full)."""
        while True:
            await self._files_pending.wait()
            await asyncio.sleep(self.FILE_RETRY)
            if self._files_pending.is_set():
                self._write_files()

    def _masq_configs(self) -> list[MasqConfig]:
        """One config per family the lease has (the IPv6 one in dual stack)."""
        assert self.lease is not None and self.netconf is not None
        pairs: list[tuple[Any, Any]] = [(self.netconf.network, self.lease.subnet)]
        if self.netconf.enable_ipv6 and self.lease.ipv6_subnet is not None:
            pairs.append((self.netconf.ipv6_network, self.lease.ipv6_subnet))
        return [MasqConfig(network, subnet, ip_masq=self.config.ip_masq,
                           forward_rules=self.config.iptables_forward_rules,
                           random_fully=not self.config.ip_masq_fully_random_disable)
                for network, subnet in pairs]

    async def _program_masq(self) -> None:
        """Masquerade/forward rules for the current lease (a no-op when both are off)."""
        for cfg in self._masq_configs():
            if cfg.empty:
                continue
            masq = self.masqs.get(cfg.family)
            if masq is None:
                assert self.netconf is not None
                masq = make_masq_rules(cfg, backend=self.config.masq_mode,  # type: ignore[arg-type]
                                       enable_nftables=self.netconf.enable_nftables)
                await asyncio.to_thread(masq.apply)
                self.masqs[cfg.family] = masq
            else:
                await asyncio.to_thread(masq.update, cfg)
            log_event(log, "masquerade rules programmed", family=f"IPv{cfg.family}",
                      ip_masq=cfg.ip_masq, forward_rules=cfg.forward_rules)

    async def _keep_masq(self) -> None:
        """Repair the rules when someone else removed or changed them."""
        while True:
            await asyncio.sleep(self.config.iptables_resync)
            for masq in self.masqs.values():
                try:
                    if await asyncio.to_thread(masq.ensure):
                        self.metrics.drift_repaired(1, kind="masq_rules")
                        log.warning("masquerade/forward rules were missing or changed; repaired")
                except MasqError as exc:
                    log.error("checking masquerade rules failed: %s", exc)

    # -- start-up ------------------------------------------------------------------------

    async def _load_network_config(self) -> NetworkConfig:
        async def fetch() -> NetworkConfig:
            netconf = await self.manager.network_config()
            backend_class(netconf.backend.type).validate_options(netconf.backend.options)
            return netconf

        netconf: NetworkConfig = await self._retry(
            f"reading {config_key(self.config.etcd_prefix)}", fetch)
        for name in netconf.unknown_fields:
            log.warning("network config: unknown field %r ignored", name)
        return netconf

    # An --iface that does not exist yet may appear (a NIC being renamed, a bond coming up):
    # wait this long, then exit non-zero so that the supervisor sees it.
    IFACE_WAIT = 60.0

    async def start(self) -> None:
        cfg = self.config
        # What can be checked before anything is changed is checked first.
        check_writable_path(cfg.subnet_file, "--subnet-file")
        if cfg.docker_opts_file:
            check_writable_path(cfg.docker_opts_file, "--docker-opts-file")
        if cfg.cni_conf_file:
            check_writable_path(cfg.cni_conf_file, "--cni-conf-file")
        if cfg.healthz_port:
            self.health = HealthServer(
                self.readiness, self.metrics.render, host=cfg.healthz_ip, port=cfg.healthz_port,
                metrics_content_type=self.metrics.content_type,
            )
            try:
                await self.health.start()
            except OSError as exc:
                del self.health
                raise StartupError(f"--healthz-ip/--healthz-port {cfg.healthz_ip}:{cfg.healthz_port}: "
                                   f"cannot listen: {os.strerror(exc.errno) if exc.errno else exc}") from None
        self.notifier.status("waiting for the network config")
        self.netconf = await self._load_network_config()
        btype = self.netconf.backend.type
        self.metrics.set_backend(btype)
        if backend_class(btype).needs_net_admin and not has_net_admin():
            raise StartupError(
                f"the {btype} backend needs root or CAP_NET_ADMIN (netlink, firewall rules); "
                f"running as uid {os.geteuid()} without it")
        ipv6 = self.netconf.enable_ipv6
        ext = await self._retry("choosing the external interface",
                                lambda: self.resolve_interface(cfg, ipv6),
                                give_up_after=self.IFACE_WAIT)
        log_event(log, "using interface", iface=ext.name, address=ext.address,
                  public_ip=ext.public_ip, mtu=ext.mtu, backend=btype,
                  **({"address6": ext.address6, "public_ipv6": ext.public_ipv6} if ipv6 else {}))
        from flanneld.netlink import Netlink

        self.netlink = Netlink(on_outcomes=self.metrics.netlink_outcomes)
        self.backend = backend_class(btype)(
            BackendContext(ext, self.netconf, wireguard_driver=cfg.wireguard_driver),
            netlink=self.netlink)
        self.backend.wake_repair = self._repair_now
        self.backend.report = self.readiness.set_detail
        collector = self.backend.metrics_collector()
        if collector is not None:
            self.metrics.registry.register(collector)
        self.attrs = await self.backend.prepare()
        self.notifier.status("acquiring a subnet lease")
        self.keeper = LeaseKeeper(
            self.manager, self.attrs, self.netconf,
            renew_margin=cfg.subnet_lease_renew_margin * 60.0, ttl=cfg.subnet_lease_ttl,
            hooks=KeeperHooks(
                held=self.readiness.set_lease_held, conflict=self.readiness.set_lease_conflict,
                event=self.metrics.lease_event, expiry=self.metrics.set_lease_expiry,
                store_back=lambda: self.watcher.wake(), moved=self._lease_moved),
            stopping=self.stopping)
        await self.keeper.acquire(*previous_subnets(cfg.subnet_file))
        assert self.lease is not None
        self._publish_lease_info(self.lease)
        self.readiness.set_lease_held(True)
        self.network = await self.backend.register_network(self.lease)
        self.metrics.add_forwarding_source(self.backend.forwarding_source())
        await self._program_masq()
        self._write_files()
        self.book = LeaseBook(await self._lease_policy(ext), on_rejected=self._lease_rejected)
        snap = await self._retry("listing leases", self.manager.list_snapshot)
        self.book.load(snap.kvs, revision := snap.revision)
        del snap  # the values of every key (~1 MB at 5000): gone before the full pass
        self._book_changed()
        self._disown_refused()
        with self.metrics.reconcile("full"):
            result = await self.network.repair(self.book.accepted)
        peers = self.network.peer_count
        self.metrics.set_peers(peers, self.network.peer_counts())
        log_event(log, "datapath programmed", peers=peers, ops=result.applied,
                  failed=result.failed)
        self.readiness.set_backend_programmed(True)
        self.notifier.status(f"serving subnet {self.lease.subnet} with {peers} peers")
        self.watcher = LeaseWatcher(self.manager, (), revision, book=self.book,
                                    on_reset=self.metrics.watch_reset, on_batch=self._book_changed)

    async def _lease_policy(self, ext: ExternalInterface) -> LeasePolicy:
        """The validation every peer lease passes; protects our underlay and etcd addresses."""
        assert self.netconf is not None
        protected: set[Any] = {ext.address, ext.public_ip}
        protected |= {a for a in (ext.address6, ext.public_ipv6) if a is not None}
        protected.update(await etcd_addresses(self.store_endpoints))
        subnet_len, ipv6_subnet_len = self.netconf.subnet_len, self.netconf.ipv6_subnet_len
        if self.config.kube_subnet_mgr and self.lease is not None:
            # Kubernetes mode: every node's lease is a podCIDR of the controller manager's
            # --node-cidr-mask-size, ours included; SubnetLen plays no part (as in Go).
            subnet_len = self.lease.subnet.prefixlen
            if self.lease.ipv6_subnet is not None:
                ipv6_subnet_len = self.lease.ipv6_subnet.prefixlen
        return LeasePolicy.build(self.netconf.network, subnet_len, protected,
                                 ipv6_network=self.netconf.ipv6_network,
                                 ipv6_subnet_len=ipv6_subnet_len)

    def _lease_rejected(self, rejection: Rejection) -> None:
        self.rejections.rejected(rejection)
        self.metrics.lease_rejected(rejection.reason.value)

    def _book_changed(self) -> None:
        """After each watch batch or listing: the rejection gauges and the log summary."""
        assert self.book is not None
        self.metrics.set_rejected({r.value: n for r, n in self.book.counts.items()}, REJECT_REASONS)
        self.rejections.flush()

    def observe_store(self, op: str, result: str, seconds: float) -> None:
        """The store's request observer: metrics and reachability."""
        self.metrics.etcd_result(op, result, seconds)
        self.store_health.observe(result)

    async def _watch_store(self) -> None:
        """Once a second: readiness and the gauge follow how long etcd has been unreachable;
        suppressed rejection lines are summed up when their window ends."""
        while True:
            await asyncio.sleep(1.0)
            self.metrics.set_etcd_reachable(self.store_health.reachable)
            self.readiness.set_store_problem(self.store_health.problem())
            self.rejections.flush()
            self._pool_usage()

    # -- tasks ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        async for batch in self.watcher.events():
            self._handle_lease_events(batch)

    async def _resync_loop(self) -> None:
        """Every --resync-interval, re-list the leases as a safety net behind the watch."""
        while True:
            await asyncio.sleep(self.config.resync_interval)
            try:
                events = await self.watcher.resync()
            except StoreUnavailableError as exc:
                log.warning("periodic lease resync skipped: %s", exc)
                continue
            if events:
                log.warning("periodic resync found %d lease changes the watch had not delivered",
                            len(events))
                self._handle_lease_events(events)

    def _handle_lease_events(self, batch: Sequence[LeaseEvent]) -> None:
        """Our own key: defended.  Every other lease: a pending change for the network,
        which decides whether it is a peer (and logs peers added, changed, removed)."""
        assert self.lease is not None
        for event in batch:
            lease = event.lease
            if lease.subnet == self.lease.subnet:
                if event.kind is LeaseEventKind.REMOVED or lease.attrs != self.lease.attrs:
                    assert self.keeper is not None
                    self.keeper.trouble()  # deleted, rejected or rewritten: defend it
                continue
            self._changes[lease.subnet] = None if event.kind is LeaseEventKind.REMOVED else lease
        self._dirty.set()

    async def _reconcile_loop(self) -> None:
        """Apply pending changes on every wake-up; start a repair when one is due (it runs in
        its own task, so the changes that arrive meanwhile are applied at once)."""
        self._next_full = time.monotonic() + self.config.drift_interval
        repair: asyncio.Task[None] | None = None
        try:
            while True:
                timeout = None if repair is not None else max(0.0, self._next_full - time.monotonic())
                await wait_or_stop(self._dirty, timeout)
                self._dirty.clear()
                if repair is not None and repair.done():
                    repair.result()  # an unexpected error ends the loop (the task died)
                    repair = None
                lease = self.lease
                assert self.network is not None and lease is not None
                held = self.network.lease
                if (lease.subnet, lease.ipv6_subnet) != (held.subnet, held.ipv6_subnet):
                    if repair is not None:
                        await repair
                        repair = None
                    await self._move_network(lease)
                if repair is None and time.monotonic() >= self._next_full:
                    repair = asyncio.create_task(self._repair(self.network), name="repair")
                if self._changes:
                    await self._apply_changes(self.network)
        finally:
            if repair is not None:
                repair.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await repair

    async def _apply_changes(self, network: Network) -> None:
        # Only the peers named are planned: O(changes), not O(peers).
        changes, self._changes = self._changes, {}
        try:
            with self.metrics.reconcile("incremental"):
                await network.apply(changes)
        except (FlannelError, OSError) as exc:
            log.error("applying %d lease changes failed: %s; retrying in 1s", len(changes), exc)
            for subnet, lease in changes.items():  # retried, unless newer news came
                self._changes.setdefault(subnet, lease)
            await asyncio.sleep(1.0)
            self._dirty.set()
        self.metrics.set_peers(network.peer_count, network.peer_counts())

    def _disown_refused(self) -> None:
        """Tell the backend which routes only refused leases explain (a full pass removes
        them): per family, from the lease book."""
        assert self.backend is not None and self.book is not None
        self.backend.disowned = self.book.disowned_routes()
        self.backend.disowned6 = self.book.disowned_routes6()

    def _repair_now(self) -> None:
        """The backend lost its datapath (and made it again): repair at once."""
        self._next_full = 0.0
        self._dirty.set()

    async def _repair(self, network: Network) -> None:
        """The full pass: every accepted lease, the kernel observed; drift counted.  When it
        ends (or fails: retried in 1s) the next one is scheduled and the reconciler woken."""
        assert self.backend is not None and self.book is not None
        self._disown_refused()
        retry_in = self.config.drift_interval
        try:
            with self.metrics.reconcile("full"):
                result = await network.repair(self.book.accepted)
        except (FlannelError, OSError) as exc:
            log.error("reconcile (full) failed: %s", exc)
            retry_in = 1.0
        else:
            if result.repaired:
                self.metrics.drift_repaired(result.repaired)
                log_event(log, "drift repaired: kernel objects were missing or wrong",
                          level=logging.WARNING, repaired=result.repaired)
            self.metrics.set_peers(network.peer_count, network.peer_counts())
        self._next_full = time.monotonic() + retry_in
        self._dirty.set()

    # -- run -----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        watchdog = start_watchdog(self.notifier)
        try:
            starter = asyncio.create_task(self.start(), name="start")
            stopper = asyncio.create_task(self.stopping.wait(), name="stop-wait")
            done, _ = await asyncio.wait({starter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if starter not in done:
                starter.cancel()
                with contextlib.suppress(asyncio.CancelledError, FlannelError):
                    await starter
                return self.exit_code
            stopper.cancel()
            try:
                starter.result()
                # What start-up made (modules, the config, the first listing) lives as long
                # as the process: out of the collector's sight, a full collection no longer
                # walks it.  Measured: with 5000 peers a lease event took 1.66x (p50) the
                # time it takes with none; with this, 1.0x (docs/benchmarks.md).  Only in the
                # daemon's own process (cli), never in a process that embeds the daemon.
                if self.freeze_gc:
                    gc.freeze()
            except ConfigError as exc:
                log.critical("%s", exc)
                self.exit_code = 2
                return self.exit_code
            except FlannelError as exc:
                log.critical("%s", exc)
                self.exit_code = 1
                return self.exit_code
            self._spawn(self._watch(), "watch")
            self._spawn(self._reconcile_loop(), "reconcile")
            assert self.keeper is not None
            self._spawn(self.keeper.run(), "lease")
            self._spawn(self._resync_loop(), "resync")
            self._spawn(self._keep_files(), "files")
            assert self.netconf is not None
            self._spawn(ConfigWatcher(self.store, config_key(self.config.etcd_prefix),
                                      self.netconf).run(), "config-watch")
            self._spawn(self._watch_store(), "store-health")
            if self.masqs:
                self._spawn(self._keep_masq(), "masq")
            self._spawn(self._retry("telling the subnet manager the datapath is up",
                                    self.manager.datapath_ready), "datapath-ready")
            log_event(log, "flanneld running", version=__version__,
                      subnet=self.lease.subnet if self.lease else "")
            await self.stopping.wait()
            return self.exit_code
        finally:
            self.notifier.stopping("shutting down; datapath left in place")
            await stop_watchdog(watchdog)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.network is not None:
                await self.network.close()
            if self.backend is not None:
                await self.backend.close()
            netlink = getattr(self, "netlink", None)
            if netlink is not None:
                await netlink.close()
            health: HealthServer | None = getattr(self, "health", None)
            if health is not None:
                await health.close()
            await self.store.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            log.info("flanneld stopped")

