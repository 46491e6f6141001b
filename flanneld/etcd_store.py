"""LeaseStore over etcd v3 with aetcd: timeouts, endpoint failover, TLS and basic auth.

aetcd talks to one host:port and has no failover, so this module keeps one client per endpoint
and moves to the next endpoint when a call fails to connect or times out.  Every unary call has
a deadline.  Non-idempotent calls are never retried blindly: the subnet manager re-reads the key
after an ambiguous create, so a retried transaction cannot make it lose its own lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

# grpc's C core prints its own transport errors on stderr; ours say the same in one log line.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import aetcd
from aetcd import exceptions as etcd_exc
from aetcd import rpc, transactions, utils

from flanneld.errors import ConfigError, FlannelError, StoreUnavailableError
from flanneld.store import (
    CompactedError,
    EventKind,
    Grant,
    KeyValue,
    RequestObserver,
    Snapshot,
    WatchEvent,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.InternalError,
    etcd_exc.WatchTimeoutError,
    TimeoutError,
)


# grpc backs off reconnecting up to 120 s by default and fails every call meanwhile with the
# last "connection refused": after a long etcd outage the daemon would stay cut off for up to
# two minutes after etcd is back.  Our callers have their own backoff, so keep grpc's short.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# grpc refuses to receive a message over 4 MiB by default, and a prefix listing or a watch
# response batching several events is one message: a few big junk keys under subnets/ would
# stop the daemon from starting.  Go's clientv3 receives up to 2 GiB; we allow 64 MiB, which is
# far over any single value etcd accepts (--max-request-bytes, 1.5 MiB by default), and page
# listings (below) so the size of the whole prefix does not matter.  Sends are our own small
# requests; the same bound only keeps a runaway one from being streamed to etcd.
DEFAULT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_SEND_BYTES = 64 * 1024 * 1024
# Keys per listing page to start with; halved (down to 1) while a page is over the receive limit.
DEFAULT_LIST_PAGE_KEYS = 500
# Start a listing over at most this many times when etcd compacts its revision meanwhile.
_LIST_RESTARTS = 5


class EtcdNotFoundError(FlannelError):
    """etcd answered that the object (e.g. an etcd lease) does not exist."""


class StoreAuthError(StoreUnavailableError):
    """etcd refused our credentials; retrying another endpoint does not help."""


class _PageError(Exception):
    """A listing page failed in a way the paging loop handles (not the endpoint's fault)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _PageTooLargeError(_PageError):
    """The page's response was over our grpc receive limit."""


class _PageCompactedError(_PageError):
    """The listing's revision was compacted away between two pages."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class TLSFiles:
    cafile: str
    certfile: str
    keyfile: str


def parse_endpoints(spec: str) -> list[Endpoint]:
    """`http://a:2379,https://b:2379` -> endpoints; ConfigError on anything malformed."""
    endpoints = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        url = urlsplit(raw if "://" in raw else f"http://{raw}")
        if url.scheme not in ("http", "https"):
            raise ConfigError(f"--etcd-endpoints: unsupported scheme in {raw!r} (use http or https)")
        try:
            port = url.port or 2379
        except ValueError:
            raise ConfigError(f"--etcd-endpoints: bad port in {raw!r}") from None
        if not url.hostname:
            raise ConfigError(f"--etcd-endpoints: no host in {raw!r}")
        endpoints.append(Endpoint(url.scheme, url.hostname, port))
    if not endpoints:
        raise ConfigError("--etcd-endpoints: no endpoint given")
    return endpoints


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd.Client that can open a TLS channel (aetcd itself only opens insecure ones)."""

    def __init__(self, *, credentials: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._credentials is None:
            await super().connect()
            return
        if self._connected.is_set():
            return
        real_insecure = rpc.insecure_channel

        def secure(target: str, options: Any = None) -> Any:
            return rpc.secure_channel(target, self._credentials, options=options)

        # aetcd builds its channel with rpc.insecure_channel; swap in a secure one for this call.
        rpc.insecure_channel = secure
        try:
            await super().connect()
        finally:
            rpc.insecure_channel = real_insecure

    async def range_page(self, key: bytes, range_end: bytes, limit: int, revision: int) -> Any:
        """One Range call (aetcd's get_range has no limit or revision): up to ``limit`` keys in
        [key, range_end) in key order, at ``revision`` (0: the current one)."""
        await self.connect()
        request = rpc.RangeRequest(key=key, range_end=range_end, limit=limit, revision=revision)
        try:
            return await self.kvstub.Range(request, timeout=self._timeout, metadata=self.metadata)
        except rpc.AioRpcError as exc:
            code, detail = exc.code(), exc.details() or ""
            # etcd's own "too many requests" is RESOURCE_EXHAUSTED too: an endpoint failure.
            if code == rpc.StatusCode.RESOURCE_EXHAUSTED and "too many requests" not in detail:
                raise _PageTooLargeError(detail) from None
            if code == rpc.StatusCode.OUT_OF_RANGE and "compacted" in detail:
                raise _PageCompactedError(detail) from None
            raise


def _grpc_credentials(tls: TLSFiles) -> Any:
    import grpc

    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None

    ca = read(tls.cafile, "--etcd-cafile")
    cert = read(tls.certfile, "--etcd-certfile")
    key = read(tls.keyfile, "--etcd-keyfile")
    # Fail early with a clear message on unusable files (grpc would only say "handshake failed").
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        ctx.load_verify_locations(cadata=ca.decode(errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"--etcd-cafile {tls.cafile}: not a usable CA certificate: {exc}") from None
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"--etcd-certfile/--etcd-keyfile: certificate and key do not load: {exc}"
        ) from None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _grpc_details(exc: BaseException) -> str:
    """The one-line cause inside a grpc/aetcd error (not its multi-line repr)."""
    details = getattr(exc, "details", None)
    if callable(details):
        with contextlib.suppress(Exception):
            text = details()
            if text:
                return str(text)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and callable(getattr(cause, "details", None)):
        return _grpc_details(cause)
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _explain(detail: str, *, tls: bool, timeout: float = 0.0) -> str:
    """Turn grpc's transport wording into what happened and what an operator should check."""
    lowered = detail.lower()
    if "connection refused" in lowered:
        return "connection refused (is etcd listening on that address and port?)"
    if tls and any(word in lowered for word in ("ssl", "certificate", "tsi_", "handshake failed")):
        return (
            "TLS failed: the server's certificate is not signed by --etcd-cafile, or it refused "
            f"our client certificate: {detail}"
        )
    if any(word in lowered for word in ("timeout", "timed out", "deadline", "handshaker shutdown")):
        return f"no answer within {timeout:g}s (host unreachable, or a firewall drops it): {detail}"
    if "no route to host" in lowered or "network is unreachable" in lowered:
        return f"unreachable: {detail}"
    if not tls and any(word in lowered for word in ("ssl", "tsi_", "wrong version number")):
        return f"{detail} (the endpoint may speak https: use an https:// endpoint and TLS files)"
    return detail


def _cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _raise_if_cancelled() -> None:
    """A library call returned although this task was asked to stop: give the cancellation
    back.  aetcd waits for a watch's creation with ``asyncio.wait_for``, which on Python 3.11
    drops a cancellation that arrives in the same turn as the answer (CPython gh-86296): the
    task went on, into a watch that never ends (a daemon's shutdown waited for it).  Inside
    an ``asyncio.timeout`` block, a timeout's own dropped cancellation becomes the block's
    TimeoutError, as it should."""
    if _cancel_requested():
        raise asyncio.CancelledError


async def _let_go(watch: Any) -> None:
    """Cancel a watch on the server, bounded (best effort: the stream may be gone)."""
    try:
        await asyncio.wait_for(watch.cancel(), 1)
    except Exception:
        log.debug("watch cancel failed", exc_info=True)


class EtcdStore:
    """The real lease store.  One instance per process; safe for concurrent use."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        timeout: float = 5.0,
        tls: TLSFiles | None = None,
        username: str | None = None,
        password: str | None = None,
        observer: RequestObserver | None = None,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        max_send_bytes: int = DEFAULT_MAX_SEND_BYTES,
        list_page_keys: int = DEFAULT_LIST_PAGE_KEYS,
    ) -> None:
        if any(ep.scheme == "https" for ep in endpoints) and tls is None:
            raise ConfigError(
                "https etcd endpoints need --etcd-cafile, --etcd-certfile and --etcd-keyfile"
            )
        if min(max_receive_bytes, max_send_bytes, list_page_keys) < 1:
            raise ValueError("message limits and the page size must be positive")
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._credentials = _grpc_credentials(tls) if tls is not None else None
        self._username = username
        self._password = password
        self._observer = observer
        self._max_receive_bytes = max_receive_bytes
        self._max_send_bytes = max_send_bytes
        self._list_page_keys = list_page_keys
        self._clients: dict[int, _Client] = {}
        self._current = 0

    @property
    def current_endpoint(self) -> Endpoint:
        return self._endpoints[self._current]

    def _client(self, index: int) -> _Client:
        client = self._clients.get(index)
        if client is None:
            ep = self._endpoints[index]
            client = _Client(
                host=ep.host,
                port=ep.port,
                username=self._username,
                password=self._password,
                timeout=max(1, round(self._timeout)),
                credentials=self._credentials,
                options={
                    **dict(_CHANNEL_OPTIONS),
                    "grpc.max_receive_message_length": self._max_receive_bytes,
                    "grpc.max_send_message_length": self._max_send_bytes,
                },
            )
            self._clients[index] = client
        return client

    def _observe(self, op: str, result: str, started: float) -> None:
        if self._observer is not None:
            self._observer(op, result, time.monotonic() - started)

    def _explain(self, index: int, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self._timeout + 1:g}s (host unreachable, or a firewall drops it)"
        return _explain(_grpc_details(exc), tls=self._endpoints[index].scheme == "https",
                        timeout=self._timeout + 1)

    async def _call(self, op: str, fn: Callable[[_Client], Awaitable[T]]) -> T:
        """Run one request, failing over to the next endpoints on connection errors."""
        failures: list[str] = []
        for _ in range(len(self._endpoints)):
            index = self._current
            started = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the call completes (CPython gh-86296), so a
                # cancelled task would go on issuing requests.
                async with asyncio.timeout(self._timeout + 1):
                    result = await fn(self._client(index))
                    _raise_if_cancelled()
            except _PageError:
                self._observe(op, "error", started)
                raise
            except etcd_exc.UnauthenticatedError as exc:
                self._observe(op, "error", started)
                raise StoreAuthError(
                    f"etcd {self._endpoints[index]} refused our credentials: {exc}"
                ) from None
            except etcd_exc.InvalidArgumentError as exc:
                self._observe(op, "error", started)
                if "user name is empty" in str(exc):
                    raise StoreAuthError(
                        f"etcd {self._endpoints[index]} has authentication enabled: give "
                        "--etcd-username and --etcd-password (FLANNELD_ETCD_USERNAME/_PASSWORD)"
                    ) from None
                if "authentication" in str(exc):
                    raise StoreAuthError(
                        f"etcd {self._endpoints[index]} refused our credentials: {exc}"
                    ) from None
                raise StoreUnavailableError(
                    f"etcd {op} rejected by {self._endpoints[index]}: {exc}"
                ) from None
            except etcd_exc.ClientError as exc:
                if "not found" in str(exc) and not isinstance(exc, _RETRYABLE):
                    # e.g. "requested lease not found": an answer, not a failing endpoint.
                    self._observe(op, "ok", started)
                    raise EtcdNotFoundError(str(exc)) from None
                self._observe(op, "error", started)
                detail = self._explain(index, exc)
                failures.append(f"{self._endpoints[index]}: {detail}")
                self._current = (index + 1) % len(self._endpoints)
                continue
            except (*_RETRYABLE, rpc.AioRpcError) as exc:
                # Anything else etcd or grpc says (e.g. "context deadline exceeded" from a member
                # without quorum) is a failure of this endpoint, not a reason to crash.
                self._observe(op, "error", started)
                detail = self._explain(index, exc)
                failures.append(f"{self._endpoints[index]}: {detail}")
                self._current = (index + 1) % len(self._endpoints)
                continue
            self._observe(op, "ok", started)
            return result
        raise StoreUnavailableError(
            f"etcd {op} failed on every endpoint ({await self.diagnose()}): " + "; ".join(failures)
        )

    async def diagnose(self) -> str:
        """One phrase on the cluster's state: unreachable, or reachable but without quorum.

        Uses the Maintenance Status call, which a member answers locally even without a leader.
        """

        async def status(index: int) -> int | None:
            client = self._client(index)
            try:
                await asyncio.wait_for(client.connect(), 1)
                response = await asyncio.wait_for(
                    client.maintenancestub.Status(rpc.StatusRequest(), timeout=1, metadata=client.metadata),
                    1.5,
                )
            except Exception:  # any failure means "not reachable"
                return None
            return int(response.leader)

        leaders = await asyncio.gather(*(status(i) for i in range(len(self._endpoints))))
        reachable = [leader for leader in leaders if leader is not None]
        total = len(self._endpoints)
        if not reachable:
            return f"0 of {total} endpoints reachable"
        if not any(reachable):
            return (
                f"QUORUM LOST: {len(reachable)} of {total} endpoints reachable but the cluster has "
                "no leader; the datapath stays as it is"
            )
        return f"{len(reachable)} of {total} endpoints reachable, leader {max(reachable):x}"

    @staticmethod
    def _kv(kv: Any) -> KeyValue:
        return KeyValue(
            key=kv.key.decode(errors="replace"),
            value=bytes(kv.value),
            lease_id=int(kv.lease),
            mod_revision=int(kv.mod_revision),
            create_revision=int(kv.create_revision),
        )

    async def get(self, key: str) -> KeyValue | None:
        got = await self._call("get", lambda c: c.get(key.encode()))
        return None if got is None else self._kv(got)

    async def list_prefix(self, prefix: str) -> Snapshot:
        """Every key under ``prefix`` at one revision, read in pages so any total size works."""
        for _ in range(_LIST_RESTARTS):
            try:
                return await self._list_pages(prefix)
            except _PageCompactedError as exc:
                log.info("etcd compacted the listing of %s while paging (%s); listing again",
                         prefix, exc.detail)
        raise StoreUnavailableError(
            f"etcd list of {prefix}: the revision was compacted {_LIST_RESTARTS} times while paging"
        )

    async def _list_pages(self, prefix: str) -> Snapshot:
        # etcd has no empty key: the empty prefix is the range from "\0" to the end ("\0").
        start = prefix.encode() or b"\0"
        end = utils.prefix_range_end(start) if prefix else b"\0"
        limit = self._list_page_keys
        revision = 0  # the first page reads the current revision; the others are pinned to it
        kvs: list[KeyValue] = []
        while True:
            try:
                page = functools.partial(
                    _Client.range_page, key=start, range_end=end, limit=limit, revision=revision
                )
                resp = await self._call("list", page)
            except _PageTooLargeError as exc:
                if limit == 1:
                    where = f"the first key after {kvs[-1].key}" if kvs else "its first key"
                    raise StoreUnavailableError(
                        f"etcd list of {prefix}: {where} is larger than the grpc receive limit "
                        f"of {self._max_receive_bytes} bytes ({exc.detail})"
                    ) from None
                limit = max(1, limit // 2)
                log.debug("etcd list of %s: page too large (%s), now %d keys a page",
                          prefix, exc.detail, limit)
                continue
            if not revision:
                revision = int(resp.header.revision)
            kvs.extend(self._kv(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return Snapshot(tuple(kvs), revision)
            start = bytes(resp.kvs[-1].key) + b"\0"
            del resp  # keep only the decoded pages

    async def grant(self, ttl: int) -> Grant:
        lease = await self._call("grant", lambda c: c.lease(ttl))
        return Grant(int(lease.id), time.time() + int(lease.ttl))

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call("revoke", lambda c: c.revoke_lease(lease_id))
        except EtcdNotFoundError:
            log.debug("etcd lease %x was already gone", lease_id)
        except StoreUnavailableError as exc:  # harmless: the lease runs out by its TTL
            log.warning("could not revoke superseded etcd lease %x: %s", lease_id, exc)

    async def time_to_live(self, lease_id: int) -> int:
        try:
            info = await self._call("ttl", lambda c: c.get_lease_info(lease_id, keys=False))
        except EtcdNotFoundError:
            return -1
        return int(info.TTL)

    async def _txn(self, op: str, compare: Any, key: str, value: bytes, lease_id: int) -> int | None:
        put = transactions.Put(key.encode(), value, lease=lease_id or None)
        ok, responses = await self._call(
            op, lambda c: c.transaction(compare=[compare], success=[put], failure=[])
        )
        if not ok:
            return None
        return int(responses[0].response_put.header.revision)

    async def create(self, key: str, value: bytes, lease_id: int) -> int | None:
        return await self._txn("create", transactions.Version(key.encode()) == 0, key, value, lease_id)

    async def update(self, key: str, value: bytes, lease_id: int, mod_revision: int) -> int | None:
        compare = transactions.Mod(key.encode()) == mod_revision
        return await self._txn("update", compare, key, value, lease_id)

    async def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        resp = await self._call("put", lambda c: c.put(key.encode(), value, lease=lease_id or None))
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        resp = await self._call("delete", lambda c: c.delete(key.encode()))
        return resp is not None and bool(getattr(resp, "deleted", 1))

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        index = self._current
        client = self._client(index)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout + 1):
                watch = await client.watch_prefix(prefix.encode(), start_revision=start_revision)
                if _cancel_requested():  # see _raise_if_cancelled
                    await _let_go(watch)
                    raise asyncio.CancelledError
        except etcd_exc.RevisionCompactedError as exc:
            raise CompactedError(int(exc.compacted_revision)) from None
        except (*_RETRYABLE, etcd_exc.ClientError, rpc.AioRpcError) as exc:
            self._observe("watch", "error", started)
            self._current = (index + 1) % len(self._endpoints)
            raise StoreUnavailableError(f"etcd watch on {self._endpoints[index]}: {exc}") from None
        self._observe("watch", "ok", started)
        try:
            yield []  # established
            async for event in watch:
                kind = EventKind.PUT if event.kind == "PUT" else EventKind.DELETE
                yield [WatchEvent(kind, self._kv(event.kv))]
        except etcd_exc.RevisionCompactedError as exc:
            raise CompactedError(int(exc.compacted_revision)) from None
        except (etcd_exc.ClientError, rpc.AioRpcError, TimeoutError) as exc:
            self._current = (index + 1) % len(self._endpoints)
            raise StoreUnavailableError(f"etcd watch on {self._endpoints[index]} broke: {exc}") from None
        finally:
            await _let_go(watch)
        # The server ended the stream without an error: treat it as a disconnect.
        raise StoreUnavailableError(f"etcd watch on {self._endpoints[index]} ended")

    async def close(self) -> None:
        for client in self._clients.values():
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:
                log.debug("closing etcd client failed", exc_info=True)
        self._clients.clear()
