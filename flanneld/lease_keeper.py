"""Keeping the node's own lease: acquire, renew, defend, and re-acquire when it is lost.

The store, both clocks and the wait are injected, so the whole life cycle runs in unit tests on
the in-memory store without waiting for real time (tests/control/test_control_lease_keeper.py);
the daemon wires the hooks (readiness, metrics, what to reprogram when the subnet moved).

- Renewal at ``expiry - min(margin, ttl/2)``; while etcd does not answer, retried every 1-3 s
  (jittered): renewed within a few seconds of etcd's return.  One log line when it starts
  failing, one when the lease runs out by our clock (then not ready: another node could be
  handed the subnet; the datapath stays), one reminder a minute, one on success.
- Our key deleted or rewritten (``trouble()``, from the lease watch): put back while our etcd
  lease is alive (``SubnetManager.defend``: the rule is written there); else re-acquire, the
  same subnet if it is free.  Go flanneld exits 0 here, which ``Restart=on-failure`` never
  restarts.
- Dual stack: our key names both halves (``10.244.1.0-24&fc00::-64``, ``SubnetManager.key_of``);
  a re-acquire asks for both previous halves back, and a lease that comes back with either
  half changed counts as moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TypedDict

from flanneld.backoff import Backoff, retry, wait_or_stop
from flanneld.errors import OutOfSubnetsError, StoreUnavailableError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.logging_setup import log_event
from flanneld.netconfig import NetworkConfig
from flanneld.subnet_manager import LeaseLostError, SubnetManager

log = logging.getLogger("flanneld")


async def _noop_moved(new: Lease, old: Lease) -> None:
    return None


def _halves(lease: Lease) -> str:
    """The lease's subnet, and its IPv6 half when it has one (for logs and readiness)."""
    if lease.ipv6_subnet is None:
        return str(lease.subnet)
    return f"{lease.subnet} + {lease.ipv6_subnet}"


class _Fields(TypedDict, total=False):
    subnet: IPv4Network
    ipv6_subnet: IPv6Network


def _fields(lease: Lease) -> _Fields:
    """A lease's subnets as structured log fields (``ipv6_subnet`` only for a dual lease)."""
    if lease.ipv6_subnet is None:
        return {"subnet": lease.subnet}
    return {"subnet": lease.subnet, "ipv6_subnet": lease.ipv6_subnet}


@dataclass
class KeeperHooks:
    """What the keeper tells the rest of the daemon."""

    held: Callable[[bool], None] = lambda held: None  # readiness: a lease is held
    conflict: Callable[[str | None], None] = lambda text: None  # readiness: key in conflict
    event: Callable[[str, bool], None] = lambda event, ok: None  # metrics: lease events
    expiry: Callable[[float | None], None] = lambda ts: None  # metrics: expiry timestamp
    store_back: Callable[[], None] = lambda: None  # etcd answers again after failures
    # The lease moved to another subnet: reprogram what depends on it.
    moved: Callable[[Lease, Lease], Awaitable[None]] = field(default=_noop_moved)


class LeaseKeeper:
    RENEW_RETRY_CAP = 3.0
    RENEW_REMINDER = 60.0

    def __init__(
        self,
        manager: SubnetManager,
        attrs: LeaseAttrs,
        netconf: NetworkConfig,
        *,
        renew_margin: float,
        ttl: float,
        hooks: KeeperHooks | None = None,
        stopping: asyncio.Event | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        wait: Callable[[asyncio.Event, float | None], Awaitable[None]] = wait_or_stop,
    ) -> None:
        self.manager, self.attrs, self.netconf = manager, attrs, netconf
        self.renew_margin, self.ttl = renew_margin, ttl
        self.hooks = hooks or KeeperHooks()
        self.stopping = stopping or asyncio.Event()
        self._wall, self._mono, self._wait = wall, mono, wait
        self._trouble = asyncio.Event()
        self.lease: Lease | None = None

    # -- acquiring -----------------------------------------------------------------------

    async def acquire(self, previous: IPv4Network | None,
                      previous_ipv6: IPv6Network | None = None) -> Lease:
        """Flannel's acquire order, retried (capped backoff, each distinct failure logged
        once) until it succeeds; CancelledError when the daemon stops meanwhile.

        ``previous``/``previous_ipv6``: the subnets to ask for again (the subnet file's
        FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET, or the lost lease's halves)."""

        def failed(exc: BaseException) -> None:
            if isinstance(exc, (StoreUnavailableError, OutOfSubnetsError)):
                self.hooks.event("acquire", False)

        lease = await retry(
            "acquiring a subnet lease",
            lambda: self.manager.acquire(self.attrs, self.netconf, previous, previous_ipv6),
            stopping=self.stopping, cap=30.0, on_failure=failed, wait=self._wait)
        self.hooks.event("acquire", True)
        self.hooks.expiry(lease.expiration)
        self.lease = lease
        return lease

    # -- keeping -------------------------------------------------------------------------

    def trouble(self) -> None:
        """Our key was deleted, rejected or rewritten (seen by the lease watch)."""
        self._trouble.set()

    def renew_delay(self) -> float | None:
        """Seconds until the next renewal (None: a reservation never needs one)."""
        assert self.lease is not None
        if self.lease.expiration is None:
            return None
        margin = min(self.renew_margin, self.ttl / 2)
        return max(0.0, self.lease.expiration - margin - self._wall())

    async def run(self) -> None:
        retry_at: float | None = None
        backoff = Backoff(1.0, self.RENEW_RETRY_CAP)
        failing_since: float | None = None
        attempts = 0
        remind_at = 0.0
        expiry_logged = False
        while True:
            assert self.lease is not None
            delay = self.renew_delay() if retry_at is None else max(0.0, retry_at - self._mono())
            await self._wait(self._trouble, delay)
            if self._trouble.is_set():
                if not await self._defend():
                    retry_at = self._mono() + backoff.next()
                    continue
                retry_at = None
                continue
            try:
                self.lease = await self.manager.renew(self.lease)
            except LeaseLostError:
                self._trouble.set()
                continue
            except StoreUnavailableError as exc:
                self.hooks.event("renew", False)
                now = self._mono()
                left = (self.lease.expiration or self._wall()) - self._wall()
                attempts += 1
                if failing_since is None:
                    failing_since, remind_at = now, now + self.RENEW_REMINDER
                    log.warning("renewing lease %s failed: %s; retrying every %.0fs at most "
                                "(expires in %.0fs)", self.lease.subnet, exc, self.RENEW_RETRY_CAP, left)
                elif now >= remind_at:
                    remind_at = now + self.RENEW_REMINDER
                    log.warning("renewing lease %s still failing (%d attempts in %.0fs): %s",
                                self.lease.subnet, attempts, now - failing_since, exc)
                if left <= 0 and not expiry_logged:
                    expiry_logged = True
                    self.hooks.held(False)
                    log.error("lease %s ran out by our clock while etcd is unreachable; the "
                              "datapath stays up and the lease is renewed once etcd answers",
                              self.lease.subnet)
                retry_at = now + backoff.next()
                continue
            if failing_since is not None:
                log.warning("lease renewed after %d failed attempts in %.1fs", attempts,
                            self._mono() - failing_since)
                self.hooks.store_back()
            if expiry_logged:
                self.hooks.held(True)
            retry_at, failing_since, attempts, expiry_logged = None, None, 0, False
            backoff.reset()
            self.hooks.event("renew", True)
            self.hooks.expiry(self.lease.expiration)
            log_event(log, "lease renewed", subnet=self.lease.subnet,
                      expires_in_s=round((self.lease.expiration or 0) - self._wall()))

    async def _defend(self) -> bool:
        """Put our key back while our etcd lease lives, else re-acquire.  False: etcd did not
        answer (the caller retries; the datapath stays as it is)."""
        assert self.lease is not None
        self._trouble.clear()
        subnet = _halves(self.lease)
        try:
            kv = await self.manager.store.get(self.manager.key_of(self.lease))
            if kv is not None:
                holder = self.manager.decode(kv)
                who = f"PublicIP {holder.attrs.public_ip}" if holder is not None else "a bad value"
                self.hooks.conflict(f"lease conflict: our key {subnet} holds {who}")
                log.error("LEASE CONFLICT: our lease key for subnet %s was rewritten (now %s, "
                          "etcd lease %x); re-asserting our lease if our etcd lease %x is alive",
                          subnet, who, kv.lease_id, self.lease.etcd_lease_id)
            else:
                self.hooks.event("lose", True)
                self.hooks.held(False)
                log.error("LEASE LOST: our lease key for subnet %s was deleted; re-creating it "
                          "(the datapath stays up meanwhile)", subnet)
            self.lease, how = await self.manager.defend(self.lease)
        except LeaseLostError as exc:
            self.hooks.conflict(None)
            log.error("%s", exc)
            await self._reacquire()
            return True
        except StoreUnavailableError as exc:
            log.warning("checking our lease %s failed: %s; retrying", subnet, exc)
            self._trouble.set()
            return False
        if how == "reasserted":
            self.hooks.event("conflict", True)
            log_event(log, "lease re-asserted", level=logging.WARNING, **_fields(self.lease))
        elif how == "restored":
            self.hooks.event("reacquire", True)
            log_event(log, "lease re-acquired", **_fields(self.lease), how="re-created")
        self.hooks.conflict(None)
        self.hooks.held(True)
        return True

    async def _reacquire(self) -> None:
        assert self.lease is not None
        old = self.lease
        self.hooks.event("lose", True)
        self.hooks.expiry(None)
        self.hooks.held(True)  # a lost lease is reported as "lease lost", not "waiting"
        self.hooks.held(False)
        log.error("LEASE LOST: our lease for subnet %s was deleted, expired or taken; re-acquiring "
                  "(the datapath stays up meanwhile)", _halves(old))
        self._trouble.clear()
        new = await self.acquire(previous=old.subnet, previous_ipv6=old.ipv6_subnet)
        self.hooks.event("reacquire", True)
        if new.subnet != old.subnet or new.ipv6_subnet != old.ipv6_subnet:
            log.warning("re-acquired a different subnet %s (was %s)", _halves(new), _halves(old))
            await self.hooks.moved(new, old)
        else:
            log_event(log, "lease re-acquired", **_fields(new))
        # A delete event for the old key may still be in flight; it must not undo this.
        self._trouble.clear()
        self.hooks.held(True)
