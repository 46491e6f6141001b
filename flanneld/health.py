"""The daemon's one HTTP listener: /healthz, /readyz and /metrics.

Go flannel serves /healthz on ``--healthz-ip``:``--healthz-port``; we add /readyz and /metrics on
the same listener. It is plain asyncio streams on purpose: the answer to /healthz comes from the
daemon's own event loop, so a wedged loop stops answering and a liveness probe notices (a
framework running in a thread would keep saying "running"). Requests are bounded in size and
time so that garbage or slow clients cannot hold the loop or memory: a request head is at most
``max_request_bytes`` and must be complete within ``head_timeout`` seconds (2 s; capped by
``request_timeout``, 5 s, which also bounds writing the answer); an incomplete head gets 408 and
the connection is closed.

Floods of idle connections must not starve the probes (a liveness probe that is refused would
restart a healthy daemon), so there is no small cap that turns new clients away. Up to
``max_connections`` connections are held open: by default 1024, or half the open-file soft
limit (RLIMIT_NOFILE) if that is lower, at least 64, leaving the daemon room for its own files
and sockets. When a new connection arrives at the limit, the *oldest* connection that has not
yet delivered a complete request head (an idle or slow one) is evicted (closed without an
answer) to make room; a connection whose request is being answered is never evicted. Only if
every held connection is being answered is the new one closed at once, and answers are bounded
in time. A prober that sends its request promptly is thus only at risk if ``max_connections``
newer connections arrive within the few milliseconds its head is in flight; a slow client is
closed after ``head_timeout`` at the latest.

Readiness is a small :class:`Readiness` object the daemon updates (lease held, backend
programmed, subnet.env written); it notifies listeners on change, which is how sd_notify's
READY=1 and the ``flannel_ready`` gauge follow exactly what /readyz says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus

log = logging.getLogger(__name__)

ReadinessListener = Callable[[bool, str], None]

#: Most connections held open by default; see :func:`default_max_connections`.
MAX_CONNECTIONS = 1024
#: Fewest connections held open by default, whatever the open-file limit says.
MIN_CONNECTIONS = 64
#: Seconds a client has to send its complete request head by default.
HEAD_TIMEOUT = 2.0


def default_max_connections() -> int:
    """1024, or half the open-file soft limit if that is lower (at least 64): the rest of the
    descriptors stay for the daemon's own files, sockets and etcd connections."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft // 2))


class Readiness:
    """What /readyz reports: ready once the lease is held, the backend programmed and
    subnet.env written; not ready again while the lease is lost or in conflict (our key holds
    someone else's value), while writing subnet.env fails, and while etcd has been
    unreachable for longer than the daemon's bound (``--etcd-unreachable-not-ready``).

    ``reason`` is a short operator-facing text ("ready", "waiting for: lease, subnet.env",
    "lease lost"), also used as sd_notify's STATUS=.
    """

    def __init__(self) -> None:
        self.lease_held = False
        self.backend_programmed = False
        self.subnet_file_written = False
        self._lease_lost = False
        # Problems that make a node with a lease not ready (None: no problem).
        self.lease_conflict: str | None = None  # our key rewritten by someone else
        self.store_problem: str | None = None  # e.g. "etcd unreachable for 31s"
        self.subnet_file_error: str | None = None  # why writing subnet.env fails
        # Operator-facing lines /readyz adds below its first line, by source (e.g. the
        # wireguard backend's stalled peers); they do not change readiness.
        self.details: dict[str, str] = {}
        self._listeners: list[ReadinessListener] = []
        self._last: tuple[bool, str] = (self.ready, self.reason)

    @property
    def ready(self) -> bool:
        return (self.lease_held and self.backend_programmed and self.subnet_file_written
                and self.lease_conflict is None and self.store_problem is None)

    @property
    def reason(self) -> str:
        if self.ready:
            return "ready"
        if self._lease_lost and not self.lease_held:
            return "lease lost"
        problems = [p for p in (self.lease_conflict, self.store_problem) if p is not None]
        if not self.subnet_file_written and self.subnet_file_error is not None:
            problems.append(f"subnet.env not written: {self.subnet_file_error}")
        if problems:
            return "; ".join(problems)
        missing = [
            name
            for name, ok in (
                ("lease", self.lease_held),
                ("backend", self.backend_programmed),
                ("subnet.env", self.subnet_file_written),
            )
            if not ok
        ]
        return "waiting for: " + ", ".join(missing)

    def add_listener(self, listener: ReadinessListener) -> None:
        """Call ``listener(ready, reason)`` now and on every later change."""
        self._listeners.append(listener)
        listener(self.ready, self.reason)

    def set_lease_held(self, held: bool) -> None:
        """True once acquired/renewed; False when the own lease is lost (deleted or expired)."""
        if held:
            self._lease_lost = False
        elif self.lease_held:
            self._lease_lost = True
        self.lease_held = held
        self._changed()

    def set_backend_programmed(self, programmed: bool) -> None:
        self.backend_programmed = programmed
        self._changed()

    def set_subnet_file_written(self, written: bool, error: str | None = None) -> None:
        """Written, or not with ``error`` saying why (shown by /readyz)."""
        self.subnet_file_written = written
        self.subnet_file_error = None if written else error
        self._changed()

    def set_lease_conflict(self, conflict: str | None) -> None:
        """Our lease key holds someone else's value (text shown by /readyz), or None."""
        self.lease_conflict = conflict
        self._changed()

    def set_store_problem(self, problem: str | None) -> None:
        """The store has been unreachable too long (text shown by /readyz), or None."""
        self.store_problem = problem
        self._changed()

    def set_detail(self, name: str, text: str | None) -> None:
        """A detail line shown by /readyz under ``name`` (None: none); readiness is unchanged."""
        if text is None:
            self.details.pop(name, None)
        else:
            self.details[name] = text

    def body(self) -> str:
        """/readyz's text: "ready" or the reason, then the detail lines."""
        return "\n".join(["ready" if self.ready else self.reason,
                          *(self.details[k] for k in sorted(self.details))]) + "\n"

    def _changed(self) -> None:
        state = (self.ready, self.reason)
        if state == self._last:
            return
        self._last = state
        for listener in list(self._listeners):
            try:
                listener(*state)
            except Exception:
                log.exception("readiness listener failed")


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class HealthServer:
    """Serves /healthz, /readyz and /metrics on one asyncio listener.

    ``render_metrics`` is typically ``Metrics.render``; without it /metrics is 404.
    Port 0 binds an ephemeral port; :attr:`port` tells which one after :meth:`start`.
    ``max_connections`` is how many connections are held open at most (None: see
    :func:`default_max_connections`); at the limit the oldest one still without a complete
    request head is evicted for a new one. ``head_timeout`` bounds the time to send the request
    head, ``request_timeout`` the head as well and, separately, writing the answer.
    :attr:`evicted_connections` counts evictions.
    """

    def __init__(
        self,
        readiness: Readiness,
        render_metrics: Callable[[], bytes] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_content_type: str = "text/plain; version=0.0.4; charset=utf-8",
        request_timeout: float = 5.0,
        max_request_bytes: int = 8192,
        max_connections: int | None = None,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.readiness = readiness
        self.render_metrics = render_metrics
        self.host = host
        self._port = port
        self.metrics_content_type = metrics_content_type
        self.request_timeout = request_timeout
        self.head_timeout = head_timeout
        self.max_request_bytes = max_request_bytes
        if max_connections is None:
            max_connections = default_max_connections()
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self.evicted_connections = 0
        self._server: asyncio.Server | None = None
        self._active = 0  # == len(self._clients)
        # Open connections, and in accept order (oldest first) the ones still without a
        # complete request head: the evictable ones.
        self._clients: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self._waiting: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle,
            self.host,
            self._port,
            limit=self.max_request_bytes,
            backlog=max(128, min(self.max_connections, MAX_CONNECTIONS)),
        )
        log.info("health listener on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and end open connections (their handlers finish, not cancelled)."""
        if self._server is None:
            return
        self._server.close()
        handlers = list(self._handlers)  # evicted ones may still be ending
        for writer in list(self._clients):
            writer.transport.abort()  # the handler sees EOF and ends by itself
        if handlers:
            await asyncio.wait(handlers, timeout=self.request_timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), self.request_timeout)
        self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- request handling --------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self.max_connections and not self._evict_oldest_waiting():
            writer.transport.abort()  # every held connection is being answered
            return
        task = asyncio.current_task()
        self._active += 1
        self._clients[writer] = task
        self._waiting[writer] = None
        if task is not None:
            self._handlers.add(task)
        try:
            try:
                try:
                    async with asyncio.timeout(min(self.head_timeout, self.request_timeout)):
                        method, path = await self._read_head(reader)
                finally:
                    self._waiting.pop(writer, None)  # being answered now: not evictable
                status, ctype, body = self._respond(method, path)
            except _BadRequest as exc:
                status, ctype = exc.status, "text/plain; charset=utf-8"
                body, method = f"{exc.status.phrase}\n".encode(), "GET"
            except TimeoutError:
                status, ctype = HTTPStatus.REQUEST_TIMEOUT, "text/plain; charset=utf-8"
                body, method = b"request timeout\n", "GET"
            if writer not in self._clients:  # evicted while reading the head: already closed
                return
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(head if method == "HEAD" else head + body)
            async with asyncio.timeout(self.request_timeout):
                await writer.drain()
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self._forget(writer)
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (ConnectionError, TimeoutError, OSError):
                writer.transport.abort()  # a client that does not read: drop what is left
            finally:
                if task is not None:
                    self._handlers.discard(task)

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        """Stop counting ``writer`` (once, whether it ended or was evicted)."""
        self._waiting.pop(writer, None)
        if writer in self._clients:
            del self._clients[writer]
            self._active -= 1

    def _evict_oldest_waiting(self) -> bool:
        """Close the oldest connection still without a complete head; False if there is none."""
        if not self._waiting:
            return False
        writer, _ = self._waiting.popitem(last=False)
        self._forget(writer)
        self.evicted_connections += 1
        if self.evicted_connections == 1 or self.evicted_connections % 1000 == 0:
            log.warning(
                "health listener: %d connections open, evicted the oldest idle one (%d evictions so far)",
                self.max_connections,
                self.evicted_connections,
            )
        writer.transport.abort()  # its handler sees EOF, finds itself evicted and ends
        return True

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Read the request line and headers (CRLF or bare LF), bounded in total size."""
        total = 0
        lines: list[bytes] = []
        while True:
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError) as exc:
                raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from exc
            total += len(line)
            if total > self.max_request_bytes:
                raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if not line:  # EOF before the end of the head
                if not lines:
                    raise _BadRequest(HTTPStatus.BAD_REQUEST)
                break
            if not line.strip():
                if lines:
                    break
                continue  # tolerate leading empty lines (RFC 9112 2.2)
            lines.append(line)
        try:
            method, target, version = lines[0].decode("ascii").split()
        except (UnicodeDecodeError, ValueError) as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST) from exc
        if not version.startswith("HTTP/1.") or not target.startswith("/"):
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        return method, target.split("?", 1)[0]

    def _respond(self, method: str, path: str) -> tuple[HTTPStatus, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path not in ("/healthz", "/readyz", "/metrics") or (
            path == "/metrics" and self.render_metrics is None
        ):
            return HTTPStatus.NOT_FOUND, text, b"not found\n"
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, text, b"method not allowed\n"
        if path == "/healthz":
            # Answered by the event loop itself: reaching this line is the liveness proof.
            return HTTPStatus.OK, text, b"running"
        if path == "/readyz":
            r = self.readiness
            status = HTTPStatus.OK if r.ready else HTTPStatus.SERVICE_UNAVAILABLE
            return status, text, r.body().encode()
        assert self.render_metrics is not None
        try:
            return HTTPStatus.OK, self.metrics_content_type, self.render_metrics()
        except Exception:
            log.exception("rendering metrics failed")
            return HTTPStatus.INTERNAL_SERVER_ERROR, text, b"metrics unavailable\n"
