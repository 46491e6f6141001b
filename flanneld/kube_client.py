"""A small Kubernetes API client for the kube subnet manager: HTTP/1.1 on asyncio streams + ssl.

Why not kubernetes_asyncio: importing it and making a client costs ~48 MB of RSS and ~300 ms on
top of the daemon (it loads aiohttp and ~1100 generated model modules); this module costs a few
hundred KB, since asyncio, ssl and json are loaded by the daemon anyway (docs/kube.md has the
figures).  The subnet manager needs six calls on two resources, all below.

What it does:

* Configuration as client-go builds it (``clientcmd.BuildConfigFromFlags``): a kubeconfig file
  (current or named context; server, certificate-authority(-data), insecure-skip-tls-verify,
  tls-server-name, token / tokenFile, client-certificate(-data) / client-key(-data); relative
  paths are relative to the kubeconfig's directory), ``--kube-api-url`` overriding its server,
  the URL alone (no credentials), or in-cluster (the pod's service-account token and CA,
  ``KUBERNETES_SERVICE_HOST``/``_PORT``).  Token files are re-read when they change (kubelet
  rotates projected service-account tokens).
* Requests: one keep-alive connection reused (a stale one is replaced once, before any answer
  byte); every request has a deadline.  Watches use a connection of their own.
* Errors: an HTTP error answer raises :class:`KubeApiError` (status, reason, the apiserver's
  message, the verb and resource); a 410 (an expired resourceVersion: "too old resource
  version", in a watch ERROR event or as an answer) raises :class:`GoneError`; no answer at all
  (refused, reset, timed out, TLS failure, garbage) raises :class:`KubeUnavailableError`, a
  :class:`~flanneld.errors.StoreUnavailableError`, so the daemon retries it like an unreachable
  etcd.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from flanneld import __version__
from flanneld.errors import ConfigError, FlannelError, StoreUnavailableError

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]

USER_AGENT = f"flanneld-py/{__version__}"
DEFAULT_TIMEOUT = 10.0
DEFAULT_WATCH_TIMEOUT = 300  # seconds, asked of the server (client-go's reflector: 5-10 min)
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
IN_CLUSTER_TOKEN = f"{SA_DIR}/token"
IN_CLUSTER_CA = f"{SA_DIR}/ca.crt"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
LIST_PAGE = 500
MAX_LINE = 16 << 20  # one watch event (a Node with many images is ~100 KB)
_MAX_BODY = 256 << 20


class KubeConfigError(ConfigError):
    """A kubeconfig, in-cluster environment or API URL that cannot be used; names the source."""


class KubeUnavailableError(StoreUnavailableError):
    """The apiserver could not be reached, did not answer in time, or sent no valid HTTP."""


class KubeApiError(FlannelError):
    """The apiserver answered with an error status (or a watch ERROR event).

    ``str()`` is ``<verb> <resource> "<name>": <status> <reason>: <message>`` with the
    apiserver's own message, which for 403 names the user and the missing permission, e.g.
    ``cannot patch resource "nodes/status" in API group "" at the cluster scope``.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        verb: str = "",
        resource: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.verb = verb
        self.resource = resource
        self.details = dict(details or {})
        where = " ".join(p for p in (verb, resource) if p)
        head = f"{where}: " if where else ""
        super().__init__(f"{head}{status} {reason}: {message}" if message else f"{head}{status} {reason}")

    @property
    def retryable(self) -> bool:
        """Throttled or a server-side failure: worth retrying with backoff."""
        return self.status in (429, 500, 502, 503, 504)


class GoneError(KubeApiError):
    """410 Gone/Expired: the resourceVersion is older than the server keeps; list again."""


WatchExpired = GoneError

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 410: "Gone", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


def api_error(
    status: int, body: bytes | Mapping[str, Any], *, verb: str = "", resource: str = ""
) -> KubeApiError:
    """The error for an error answer or a watch ERROR event's Status object."""
    obj: Any = body
    if isinstance(body, bytes):
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
    if isinstance(obj, Mapping) and obj.get("kind") == "Status":
        code = obj.get("code")
        status = code if isinstance(code, int) and code else status
        reason = str(obj.get("reason") or _REASONS.get(status, "Unknown"))
        message = str(obj.get("message") or "")
        details = obj.get("details") if isinstance(obj.get("details"), Mapping) else None
    else:
        reason = _REASONS.get(status, "Unknown")
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
        message = " ".join(text.split())[:500]
        details = None
    cls = GoneError if status == 410 else KubeApiError
    return cls(status, reason, message, verb=verb, resource=resource, details=details)


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class KubeConfig:
    """Where the apiserver is and how to authenticate to it."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    token_file: str | None = None
    client_cert_file: str | None = None
    client_cert_data: bytes | None = None
    client_key_file: str | None = None
    client_key_data: bytes | None = None
    source: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KubeConfigError(f"{self.source or 'kube config'}: server {self.server!r} is not an "
                                  "http(s) URL with a host")
        try:
            parts.port  # noqa: B018 (validates the port)
        except ValueError:
            raise KubeConfigError(f"{self.source or 'kube config'}: server {self.server!r} has an "
                                  "invalid port") from None
        has_cert = bool(self.client_cert_file or self.client_cert_data)
        has_key = bool(self.client_key_file or self.client_key_data)
        if has_cert != has_key:
            raise KubeConfigError(f"{self.source or 'kube config'}: a client certificate needs "
                                  "both the certificate and its key")

    def describe(self) -> str:
        """One line for logs: the server, the source and the kind of credentials (no secrets)."""
        if self.token_file:
            auth = f"token file {self.token_file}"
        elif self.token:
            auth = "token"
        elif self.client_cert_file or self.client_cert_data:
            auth = "client certificate"
        else:
            auth = "no credentials"
        src = f", {self.source}" if self.source else ""
        return f"{self.server} ({auth}{src})"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (None for http)."""
        if urlsplit(self.server).scheme != "https":
            return None
        try:
            if self.insecure_skip_tls_verify:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif self.ca_file or self.ca_data:
                ctx = ssl.create_default_context(
                    cafile=self.ca_file,
                    cadata=self.ca_data.decode("ascii", "replace") if self.ca_data else None,
                )
            else:
                ctx = ssl.create_default_context()
            self._load_client_cert(ctx)
            ctx.set_alpn_protocols(["http/1.1"])  # never h2: this client speaks HTTP/1.1 only
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise KubeConfigError(f"{self.source or 'kube config'}: TLS material: {exc}") from None
        return ctx

    def _load_client_cert(self, ctx: ssl.SSLContext) -> None:
        if not (self.client_cert_file or self.client_cert_data):
            return
        if self.client_cert_file and self.client_key_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
            return
        # ssl only loads certificates from files: -data goes through a private temp dir.
        with tempfile.TemporaryDirectory(prefix="flanneld-kube-") as tmp:
            cert = self.client_cert_file or os.path.join(tmp, "cert.pem")
            key = self.client_key_file or os.path.join(tmp, "key.pem")
            for path, data in ((cert, self.client_cert_data), (key, self.client_key_data)):
                if data is not None and not os.path.exists(path):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
            ctx.load_cert_chain(cert, key)


def _b64(value: Any, what: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise KubeConfigError(f"{source}: {what} must be a base64 string")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raise KubeConfigError(f"{source}: {what} is not valid base64") from None


def _named(items: Any, name: str, kind: str, source: str) -> Mapping[str, Any]:
    """The ``kind`` entry called ``name`` in a kubeconfig list (``clusters``, ``users``, ...)."""
    if items is None:
        items = []
    if not isinstance(items, list):
        raise KubeConfigError(f"{source}: {kind}s must be a list")
    for item in items:
        if isinstance(item, Mapping) and item.get("name") == name:
            body = item.get(kind)
            if body is None:
                return {}
            if not isinstance(body, Mapping):
                raise KubeConfigError(f"{source}: {kind} {name!r} must be a mapping")
            return body
    raise KubeConfigError(f"{source}: no {kind} named {name!r}")


def load_kubeconfig(path: str, context: str | None = None, server: str | None = None) -> KubeConfig:
    """A :class:`KubeConfig` from a kubeconfig file's ``context`` (default: current-context);
    ``server`` (``--kube-api-url``) overrides the cluster's server, as in client-go."""
    import yaml

    source = f"kubeconfig {path}"
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise KubeConfigError(f"{source}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"{source}: not YAML: {exc}") from None
    if not isinstance(doc, Mapping):
        raise KubeConfigError(f"{source}: not a kubeconfig (a mapping with clusters, users, contexts)")
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise KubeConfigError(f"{source}: no current-context (and no context named)")
    source = f"kubeconfig {path} context {ctx_name}"
    ctx = _named(doc.get("contexts"), str(ctx_name), "context", source)
    cluster_name = ctx.get("cluster")
    if not cluster_name:
        raise KubeConfigError(f"{source}: the context names no cluster")
    cluster = _named(doc.get("clusters"), str(cluster_name), "cluster", source)
    user_name = ctx.get("user")
    user = _named(doc.get("users"), str(user_name), "user", source) if user_name else {}
    base = os.path.dirname(os.path.abspath(path))

    def rel(value: Any, what: str) -> str | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise KubeConfigError(f"{source}: {what} must be a path")
        return value if os.path.isabs(value) else os.path.join(base, value)

    def data(value: Any, what: str) -> bytes | None:
        return None if value in (None, "") else _b64(value, what, source)

    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise KubeConfigError(f"{source}: user {user_name!r} uses {unsupported!r}, which flanneld-py "
                                  "does not support (use a token, tokenFile or client certificate)")
    url = server or cluster.get("server")
    if not url or not isinstance(url, str):
        raise KubeConfigError(f"{source}: cluster {cluster_name!r} has no server")
    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise KubeConfigError(f"{source}: token must be a string")
    return KubeConfig(
        server=url.rstrip("/"),
        ca_file=rel(cluster.get("certificate-authority"), "certificate-authority"),
        ca_data=data(cluster.get("certificate-authority-data"), "certificate-authority-data"),
        insecure_skip_tls_verify=cluster.get("insecure-skip-tls-verify") is True,
        tls_server_name=cluster.get("tls-server-name") or None,
        token=token or None,
        token_file=None if token else rel(user.get("tokenFile"), "tokenFile"),
        client_cert_file=rel(user.get("client-certificate"), "client-certificate"),
        client_cert_data=data(user.get("client-certificate-data"), "client-certificate-data"),
        client_key_file=rel(user.get("client-key"), "client-key"),
        client_key_data=data(user.get("client-key-data"), "client-key-data"),
        source=source,
    )


def load_in_cluster(
    token_path: str = IN_CLUSTER_TOKEN,
    ca_path: str = IN_CLUSTER_CA,
    environ: Mapping[str, str] | None = None,
) -> KubeConfig:
    """The pod's own credentials, as client-go's ``rest.InClusterConfig``."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and "
                              "KUBERNETES_SERVICE_PORT must be defined")
    try:
        with open(token_path, encoding="utf-8") as f:
            f.read(1)
    except OSError as exc:
        raise KubeConfigError(f"in-cluster: service-account token {token_path}: "
                              f"{exc.strerror or exc}") from None
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ca: str | None = ca_path
    if not os.path.exists(ca_path):
        log.error("in-cluster: no CA at %s; verifying the apiserver against the system roots", ca_path)
        ca = None
    return KubeConfig(server=f"https://{hostport}", ca_file=ca, token_file=token_path,
                      source="in-cluster")


def resolve_config(
    kube_api_url: str | None = None,
    kubeconfig: str | None = None,
    *,
    token_path: str = IN_CLUSTER_TOKEN,
    ca_path: str = IN_CLUSTER_CA,
    environ: Mapping[str, str] | None = None,
) -> KubeConfig:
    """Go flannel's choice (``clientcmd.BuildConfigFromFlags(apiUrl, kubeconfig)``): the
    kubeconfig file if given (its server replaced by the URL if both are given), else the URL
    alone, else in-cluster."""
    if kubeconfig:
        return load_kubeconfig(kubeconfig, server=kube_api_url or None)
    if kube_api_url:
        return KubeConfig(server=kube_api_url.rstrip("/"), source="--kube-api-url")
    return load_in_cluster(token_path, ca_path, environ)


# ------------------------------------------------------------------------------------------------
# HTTP/1.1


@dataclass
class _Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""


class _ChunkedReader:
    """Reads an HTTP/1.1 ``Transfer-Encoding: chunked`` body chunk by chunk."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.done = False

    async def read_chunk(self) -> bytes:
        """The next chunk's data; b"" once the last (zero-size) chunk and trailers are read."""
        if self.done:
            return b""
        line = await self._reader.readline()
        if not line.endswith(b"\n"):
            raise EOFError("connection closed inside a chunked body")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size line {line[:40]!r}") from None
        if size < 0 or size > MAX_LINE:
            raise ValueError(f"chunk of {size} bytes")
        if size == 0:
            while True:  # trailers, up to the blank line
                trailer = await self._reader.readline()
                if not trailer.endswith(b"\n"):
                    raise EOFError("connection closed inside chunked trailers")
                if trailer in (b"\r\n", b"\n"):
                    break
            self.done = True
            return b""
        data = await self._reader.readexactly(size)
        crlf = await self._reader.readline()
        if crlf not in (b"\r\n", b"\n"):
            raise ValueError("chunk not followed by CRLF")
        return data


class LineSplitter:
    """Splits a byte stream into newline-terminated lines (watch events are one JSON per line)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        start = 0
        while (nl := self._buf.find(b"\n", start)) >= 0:
            line = bytes(self._buf[start:nl]).strip()
            if line:
                lines.append(line)
            start = nl + 1
        del self._buf[:start]
        if len(self._buf) > self._max:
            raise ValueError(f"watch event longer than {self._max} bytes")
        return lines

    def tail(self) -> bytes:
        """What is left after the last newline (a final event without one)."""
        rest = bytes(self._buf).strip()
        self._buf.clear()
        return rest


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.uses = 0
        self.reusable = True

    def close(self) -> None:
        self.reusable = False
        with contextlib.suppress(Exception):
            self.writer.close()


async def _read_head(
    reader: asyncio.StreamReader, line: bytes | None = None
) -> tuple[int, str, dict[str, str], bool]:
    """Status line (read here unless given) and headers: (status, reason, headers with lowercase
    names, keep-alive)."""
    if line is None:
        line = await reader.readline()
    if not line:
        raise EOFError("connection closed before the answer")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:60]!r}")
    version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if not h.endswith(b"\n"):
            raise EOFError("connection closed inside the answer's headers")
        if h in (b"\r\n", b"\n"):
            break
        name, sep, value = h.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"bad header line {h[:60]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    conn_hdr = headers.get("connection", "").lower()
    keep = version != "HTTP/1.0" and "close" not in conn_hdr
    return status, reason, headers, keep


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> tuple[bytes, bool]:
    """The whole body and whether the connection can carry another request."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = _ChunkedReader(reader)
        parts: list[bytes] = []
        total = 0
        while chunk := await chunks.read_chunk():
            total += len(chunk)
            if total > _MAX_BODY:
                raise ValueError("answer too large")
            parts.append(chunk)
        return b"".join(parts), True
    length = headers.get("content-length")
    if length is not None:
        n = int(length)
        if n < 0 or n > _MAX_BODY:
            raise ValueError(f"content-length {n}")
        return await reader.readexactly(n), True
    return await reader.read(_MAX_BODY), False


# ------------------------------------------------------------------------------------------------
# The client


@dataclass
class _TokenSource:
    token: str | None
    path: str | None
    _mtime: float = -1.0
    _value: str | None = field(default=None, repr=False)

    def get(self) -> str | None:
        if self.path is None:
            return self.token
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime != self._mtime:
                with open(self.path, encoding="utf-8") as f:
                    self._value = f.read().strip()
                self._mtime = mtime
        except OSError as exc:
            if self._value is None:
                raise KubeConfigError(f"token file {self.path}: {exc.strerror or exc}") from None
            log.warning("token file %s: %s; using the token read before", self.path, exc.strerror or exc)
        return self._value


class KubeClient:
    """The calls the kube subnet manager makes (all ``async``; one instance per daemon)."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        max_idle: int = 1,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else min(timeout, 5.0)
        parts = urlsplit(config.server)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._ssl = config.ssl_context()
        self._server_name = config.tls_server_name or (self._host if self._ssl else None)
        self._tokens = _TokenSource(config.token, config.token_file)
        self._tokens.get()  # a missing token file is a configuration error, now
        self._idle: list[_Conn] = []
        self._max_idle = max_idle
        self._closed = False
        self._watches: weakref.WeakSet[WatchStream] = weakref.WeakSet()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connection and every watch still open."""
        self._closed = True
        for stream in list(self._watches):
            await stream.aclose()
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)

    # -- the API ---------------------------------------------------------------------------------

    async def get_node(self, name: str) -> JsonObject:
        return await self._json("GET", f"/api/v1/nodes/{_seg(name)}", verb="get",
                                resource=_res("nodes", name))

    async def list_nodes(self, resource_version: str | None = None) -> tuple[list[JsonObject], str]:
        """All nodes and the list's resourceVersion (to watch from).  Pages of 500 (a continue
        token that expired means one more, unpaged, list, as client-go's pager does);
        ``resource_version="0"`` lets the apiserver answer from its watch cache."""
        items: list[JsonObject] = []
        cont = ""
        paged = resource_version in (None, "")
        while True:
            query: dict[str, str] = {}
            if paged:
                query["limit"] = str(LIST_PAGE)
                if cont:
                    query["continue"] = cont
            elif resource_version:
                query["resourceVersion"] = resource_version
            try:
                page = await self._json("GET", "/api/v1/nodes", query, verb="list", resource="nodes")
            except GoneError:
                if not cont:
                    raise
                log.info("node list: continue token expired; listing again without paging")
                items, cont, paged = [], "", False
                continue
            page_items = page.get("items") or []
            if not isinstance(page_items, list):
                raise KubeUnavailableError("list nodes: answer without an items list")
            items.extend(page_items)
            meta = page.get("metadata") or {}
            cont = str(meta.get("continue") or "") if paged else ""
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def watch_nodes(
        self,
        resource_version: str,
        allow_bookmarks: bool = True,
        timeout_seconds: int = DEFAULT_WATCH_TIMEOUT,
    ) -> WatchStream:
        """Node events after ``resource_version``: ``async for type_, obj in ...`` with type_
        ADDED / MODIFIED / DELETED / BOOKMARK.  Ends (StopAsyncIteration) when the server closes
        the watch after ``timeout_seconds``; watch again from ``stream.resource_version``.
        Raises GoneError when the resourceVersion has expired (list again)."""
        query = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": str(timeout_seconds)}
        if allow_bookmarks:
            query["allowWatchBookmarks"] = "true"
        stream = WatchStream(self, self._path("/api/v1/nodes", query), resource_version, timeout_seconds)
        self._watches.add(stream)
        return stream

    async def patch_node(self, name: str, patch: Mapping[str, Any] | bytes) -> JsonObject:
        """Strategic merge patch of the node object (needs ``patch`` on ``nodes``)."""
        return await self._json("PATCH", f"/api/v1/nodes/{_seg(name)}", body=_body(patch),
                                content_type=STRATEGIC_MERGE, verb="patch", resource=_res("nodes", name))

    async def patch_node_status(self, name: str, patch: Mapping[str, Any] | bytes) -> JsonObject:
        """Strategic merge patch through the ``status`` subresource (needs ``patch`` on
        ``nodes/status``).  Metadata (annotations) changes go through too: this is how Go
        flannel writes its annotations, so its ClusterRole has no ``patch`` on ``nodes``."""
        return await self._json("PATCH", f"/api/v1/nodes/{_seg(name)}/status", body=_body(patch),
                                content_type=STRATEGIC_MERGE, verb="patch",
                                resource=_res("nodes/status", name))

    async def get_pod(self, namespace: str, name: str) -> JsonObject:
        return await self._json("GET", f"/api/v1/namespaces/{_seg(namespace)}/pods/{_seg(name)}",
                                verb="get", resource=_res("pods", name, namespace))

    # -- plumbing --------------------------------------------------------------------------------

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the server (tests replace this)."""
        return await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl, server_hostname=self._server_name, limit=MAX_LINE
        )

    def _path(self, path: str, query: Mapping[str, str] | None = None) -> str:
        full = self._prefix + path
        return f"{full}?{urlencode(query)}" if query else full

    def _head(self, method: str, target: str, content_type: str | None, length: int | None) -> bytes:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self._host_header}",
            f"User-Agent: {USER_AGENT}",
            "Accept: application/json",
        ]
        token = self._tokens.get()
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self, what: str) -> _Conn:
        if self._closed:
            raise KubeUnavailableError(f"{what}: client closed")
        try:
            async with asyncio.timeout(self.connect_timeout):  # not wait_for: see backoff.py
                reader, writer = await self._open()
        except TimeoutError:
            raise KubeUnavailableError(
                f"{what}: apiserver {self.config.server} did not accept a connection within "
                f"{self.connect_timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise KubeUnavailableError(
                f"{what}: apiserver {self.config.server}: TLS verification failed: "
                f"{exc.verify_message or exc} (verified against {self._ca_name()})") from None
        except (OSError, ssl.SSLError) as exc:
            raise KubeUnavailableError(
                f"{what}: apiserver {self.config.server} unreachable: {_oserror(exc)}") from None
        _keepalive(writer)
        return _Conn(reader, writer)

    def _ca_name(self) -> str:
        if self.config.ca_file:
            return f"CA file {self.config.ca_file}"
        return "the kubeconfig's certificate-authority-data" if self.config.ca_data else "the system CA roots"

    async def _request(
        self, method: str, path: str, body: bytes | None, content_type: str | None, what: str
    ) -> _Response:
        head = self._head(method, path, content_type, len(body) if body is not None else None)
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else await self._connect(what)
            reused = conn.uses > 0
            conn.uses += 1
            started = False
            keep_conn = False
            try:
                async with asyncio.timeout(self.timeout):
                    conn.writer.write(head + (body or b""))
                    await conn.writer.drain()
                    first = await conn.reader.readline()
                    started = bool(first)
                    status, reason, headers, keep = await _read_head(conn.reader, first)
                    data, reusable = await _read_body(conn.reader, headers)
                keep_conn = keep and reusable and not self._closed and len(self._idle) < self._max_idle
                return _Response(status, reason, headers, data)
            except TimeoutError:
                raise KubeUnavailableError(
                    f"{what}: no answer from {self.config.server} within {self.timeout:g}s") from None
            except (EOFError, asyncio.IncompleteReadError, OSError) as exc:
                if reused and not started and attempt == 1:
                    continue  # a keep-alive connection the server had closed: once more, fresh
                raise KubeUnavailableError(
                    f"{what}: connection to {self.config.server} failed: {_oserror(exc)}") from None
            except ValueError as exc:
                raise KubeUnavailableError(f"{what}: bad answer from {self.config.server}: {exc}") from None
            finally:
                if keep_conn:
                    self._idle.append(conn)
                else:
                    conn.close()  # also on cancellation: never back in the pool half-read
        raise AssertionError("unreachable")

    async def _json(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        verb: str,
        resource: str,
    ) -> JsonObject:
        what = f"{verb} {resource}"
        resp = await self._request(method, self._path(path, query), body, content_type, what)
        if not 200 <= resp.status < 300:
            raise api_error(resp.status, resp.body, verb=verb, resource=resource)
        try:
            obj = json.loads(resp.body)
        except ValueError:
            raise KubeUnavailableError(f"{what}: answer is not JSON ({resp.body[:80]!r})") from None
        if not isinstance(obj, dict):
            raise KubeUnavailableError(f"{what}: answer is not a JSON object")
        return obj


class WatchStream:
    """One watch request's events, on a connection of its own (see KubeClient.watch_nodes)."""

    def __init__(self, client: KubeClient, target: str, resource_version: str, timeout_seconds: int) -> None:
        self._client = client
        self._target = target
        self.resource_version = resource_version
        self._timeout_seconds = timeout_seconds
        # No byte for this long means a dead connection: the server ends the watch by itself
        # after timeout_seconds (and TCP keep-alive catches a vanished peer sooner).
        self.read_timeout = timeout_seconds + 30.0
        self._conn: _Conn | None = None
        self._chunks: _ChunkedReader | None = None
        self._lines = LineSplitter()
        self._pending: list[bytes] = []
        self._ended = False

    def __aiter__(self) -> WatchStream:
        return self

    async def __aenter__(self) -> WatchStream:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._ended = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        """Send the watch request and check its answer now (``async for`` would do it at the
        first event): an apiserver that is down, refuses the watch or answers 410 raises here."""
        if self._conn is None and not self._ended:
            await self._start()

    async def _start(self) -> None:
        what = "watch nodes"
        conn = await self._client._connect(what)
        self._conn = conn
        try:
            async with asyncio.timeout(self._client.timeout):
                conn.writer.write(self._client._head("GET", self._target, None, None))
                await conn.writer.drain()
                status, _reason, headers, _keep = await _read_head(conn.reader)
                if status != 200:
                    body, _ = await _read_body(conn.reader, headers)
                    raise api_error(status, body, verb="watch", resource="nodes")
        except TimeoutError:
            await self.aclose()
            raise KubeUnavailableError(
                f"{what}: no answer from {self._client.config.server} within {self._client.timeout:g}s"
            ) from None
        except (EOFError, asyncio.IncompleteReadError, OSError, ssl.SSLError, ValueError) as exc:
            await self.aclose()
            raise KubeUnavailableError(f"{what}: {self._client.config.server}: {_oserror(exc)}") from None
        except BaseException:
            await self.aclose()
            raise
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunks = _ChunkedReader(conn.reader)

    async def _read_more(self) -> bytes:
        assert self._conn is not None
        if self._chunks is not None:
            return await self._chunks.read_chunk()
        return await self._conn.reader.read(65536)

    async def __anext__(self) -> tuple[str, JsonObject]:
        if self._ended:
            raise StopAsyncIteration
        if self._conn is None:
            await self._start()
        while not self._pending:
            try:
                async with asyncio.timeout(self.read_timeout):
                    data = await self._read_more()
            except TimeoutError:
                await self.aclose()
                raise KubeUnavailableError(
                    f"watch nodes: nothing from {self._client.config.server} for {self.read_timeout:g}s"
                ) from None
            except (EOFError, asyncio.IncompleteReadError, OSError, ssl.SSLError, ValueError) as exc:
                await self.aclose()
                raise KubeUnavailableError(f"watch nodes: stream broke: {_oserror(exc)}") from None
            if not data:
                tail = self._lines.tail()
                if tail:
                    self._pending.append(tail)
                    break
                await self.aclose()
                raise StopAsyncIteration
            try:
                self._pending.extend(self._lines.feed(data))
            except ValueError as exc:
                await self.aclose()
                raise KubeUnavailableError(f"watch nodes: {exc}") from None
        return self._event(self._pending.pop(0))

    def _event(self, line: bytes) -> tuple[str, JsonObject]:
        event = decode_event(line)
        type_, obj = event
        if type_ == "ERROR":
            self._ended = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise api_error(500, obj, verb="watch", resource="nodes")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        return event


def decode_event(line: bytes) -> tuple[str, JsonObject]:
    """One watch line ``{"type": ..., "object": {...}}`` as (type, object)."""
    try:
        event = json.loads(line)
    except ValueError:
        raise KubeUnavailableError(f"watch nodes: event is not JSON: {line[:80]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not isinstance(
        event.get("object"), dict
    ):
        raise KubeUnavailableError(f"watch nodes: not a watch event: {line[:80]!r}")
    return event["type"], event["object"]


async def iter_events(reader: asyncio.StreamReader, chunked: bool = True) -> AsyncIterator[bytes]:
    """The event lines of a watch body read from ``reader`` (exposed for tests)."""
    chunks = _ChunkedReader(reader) if chunked else None
    lines = LineSplitter()
    while True:
        data = await chunks.read_chunk() if chunks else await reader.read(65536)
        if not data:
            if tail := lines.tail():
                yield tail
            return
        for line in lines.feed(data):
            yield line


def _seg(name: str) -> str:
    if not name or name in (".", ".."):
        raise ValueError(f"invalid object name {name!r}")
    return quote(name, safe="")


def _res(resource: str, name: str, namespace: str | None = None) -> str:
    ns = f" in namespace {namespace!r}" if namespace else ""
    return f'{resource} "{name}"{ns}'


def _body(patch: Mapping[str, Any] | bytes) -> bytes:
    return patch if isinstance(patch, bytes) else json.dumps(patch, separators=(",", ":")).encode()


def _oserror(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed in the middle of the answer"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own strerror is "Connect call failed (...)"
    return str(exc) or type(exc).__name__


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keep-alive: a watch on a vanished apiserver fails in ~1 min, not after the timeout."""
    import socket

    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
