"""flanneld.kube_client without a server: kubeconfig / in-cluster configuration, the HTTP and
chunked-watch parsing fed from memory (no sockets), error mapping."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from flanneld import kube_client as kc
from flanneld.errors import ConfigError, StoreUnavailableError

pytestmark = pytest.mark.unit

CA_PEM = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(path: Path, *, users: list[dict[str, Any]] | None = None,
                     clusters: list[dict[str, Any]] | None = None,
                     contexts: list[dict[str, Any]] | None = None, current: str | None = "ctx") -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters if clusters is not None else [
            {"name": "c1", "cluster": {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.pem"}}],
        "users": users if users is not None else [{"name": "u1", "user": {"token": "s3cret"}}],
        "contexts": contexts if contexts is not None else [
            {"name": "ctx", "context": {"cluster": "c1", "user": "u1"}}],
    }
    if current is not None:
        doc["current-context"] = current
    import yaml

    path.write_text(yaml.safe_dump(doc))
    return path


# -- kubeconfig ------------------------------------------------------------------------------------


def test_kubeconfig_token_and_relative_ca(tmp_path: Path) -> None:
    cfg = kc.load_kubeconfig(str(write_kubeconfig(tmp_path / "kc")))
    assert cfg.server == "https://10.0.0.1:6443"
    assert cfg.ca_file == str(tmp_path / "ca.pem")  # relative to the kubeconfig's directory
    assert cfg.token == "s3cret" and cfg.token_file is None
    assert not cfg.insecure_skip_tls_verify
    assert "s3cret" not in cfg.describe() and "token" in cfg.describe()
    assert "context ctx" in cfg.source


def test_kubeconfig_named_context_data_fields_and_token_file(tmp_path: Path) -> None:
    users = [
        {"name": "u1", "user": {"token": "a"}},
        {"name": "u2", "user": {"tokenFile": "tok", "client-certificate-data": b64(b"CERT"),
                                "client-key-data": b64(b"KEY")}},
    ]
    clusters = [
        {"name": "c1", "cluster": {"server": "https://a:1"}},
        {"name": "c2", "cluster": {"server": "https://[fd00::1]:6443/", "certificate-authority-data": b64(CA_PEM),
                                   "insecure-skip-tls-verify": True, "tls-server-name": "kubernetes"}},
    ]
    contexts = [{"name": "ctx", "context": {"cluster": "c1", "user": "u1"}},
                {"name": "other", "context": {"cluster": "c2", "user": "u2"}}]
    path = write_kubeconfig(tmp_path / "kc", users=users, clusters=clusters, contexts=contexts)
    cfg = kc.load_kubeconfig(str(path), context="other")
    assert cfg.server == "https://[fd00::1]:6443"
    assert cfg.ca_data == CA_PEM and cfg.ca_file is None
    assert cfg.insecure_skip_tls_verify and cfg.tls_server_name == "kubernetes"
    assert cfg.token is None and cfg.token_file == str(tmp_path / "tok")
    assert cfg.client_cert_data == b"CERT" and cfg.client_key_data == b"KEY"


def test_kubeconfig_server_override(tmp_path: Path) -> None:
    cfg = kc.load_kubeconfig(str(write_kubeconfig(tmp_path / "kc")), server="https://10.9.9.9:443")
    assert cfg.server == "https://10.9.9.9:443" and cfg.token == "s3cret"
    both = kc.resolve_config("https://10.9.9.9:443", str(tmp_path / "kc"))
    assert both.server == "https://10.9.9.9:443" and both.token == "s3cret"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"current": None}, "no current-context"),
        ({"current": "nope"}, "no context named 'nope'"),
        ({"contexts": [{"name": "ctx", "context": {"cluster": "zz", "user": "u1"}}]}, "no cluster named 'zz'"),
        ({"users": [{"name": "u1", "user": {"exec": {"command": "aws"}}}]}, "uses 'exec'"),
        ({"users": [{"name": "u1", "user": {"client-certificate-data": "!!notbase64"}}]},
         "client-certificate-data is not valid base64"),
        ({"users": [{"name": "u1", "user": {"client-certificate": "/c.pem"}}]}, "both the certificate and its key"),
        ({"clusters": [{"name": "c1", "cluster": {}}]}, "has no server"),
        ({"clusters": [{"name": "c1", "cluster": {"server": "10.0.0.1:6443"}}]}, "not an http(s) URL"),
    ],
)
def test_kubeconfig_errors_name_the_problem(tmp_path: Path, kwargs: dict[str, Any], fragment: str) -> None:
    path = write_kubeconfig(tmp_path / "kc", **kwargs)
    with pytest.raises(kc.KubeConfigError) as err:
        kc.load_kubeconfig(str(path))
    assert fragment in str(err.value)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_kubeconfig_missing_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(kc.KubeConfigError, match="No such file"):
        kc.load_kubeconfig(str(tmp_path / "absent"))
    (tmp_path / "bad").write_text("just a string")
    with pytest.raises(kc.KubeConfigError, match="not a kubeconfig"):
        kc.load_kubeconfig(str(tmp_path / "bad"))


def test_client_cert_data_is_loaded_through_private_files(tmp_path: Path) -> None:
    # Garbage PEM: loading must fail inside ssl (proving the data reached load_cert_chain),
    # as a KubeConfigError naming the source.
    cfg = kc.KubeConfig(server="https://h:1", client_cert_data=b"CERT", client_key_data=b"KEY", source="src")
    with pytest.raises(kc.KubeConfigError, match="src: TLS material"):
        cfg.ssl_context()


def test_insecure_and_plain_http_contexts() -> None:
    ctx = kc.KubeConfig(server="https://h:1", insecure_skip_tls_verify=True).ssl_context()
    assert ctx is not None and not ctx.check_hostname
    assert kc.KubeConfig(server="http://h:8080").ssl_context() is None


# -- in-cluster ------------------------------------------------------------------------------------


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "ca.crt").write_bytes(CA_PEM)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = kc.load_in_cluster(str(tmp_path / "token"), str(tmp_path / "ca.crt"), env)
    assert cfg.server == "https://10.96.0.1:443"
    assert cfg.token_file == str(tmp_path / "token") and cfg.ca_file == str(tmp_path / "ca.crt")
    assert cfg.source == "in-cluster"
    v6 = kc.load_in_cluster(str(tmp_path / "token"), str(tmp_path / "ca.crt"),
                            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert v6.server == "https://[fd00::1]:443"
    # resolve_config with neither flag is in-cluster.
    same = kc.resolve_config(token_path=str(tmp_path / "token"), ca_path=str(tmp_path / "ca.crt"), environ=env)
    assert same == cfg


def test_in_cluster_errors(tmp_path: Path) -> None:
    with pytest.raises(kc.KubeConfigError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"):
        kc.load_in_cluster(str(tmp_path / "token"), str(tmp_path / "ca.crt"), {})
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(kc.KubeConfigError, match=r"service-account token .*token"):
        kc.load_in_cluster(str(tmp_path / "token"), str(tmp_path / "ca.crt"), env)
    (tmp_path / "token").write_text("tok")
    cfg = kc.load_in_cluster(str(tmp_path / "token"), str(tmp_path / "ca.crt"), env)
    assert cfg.ca_file is None  # no CA file: the system roots, as client-go


def test_url_alone() -> None:
    cfg = kc.resolve_config("http://127.0.0.1:8080/")
    assert cfg.server == "http://127.0.0.1:8080" and cfg.token is None and cfg.source == "--kube-api-url"


# -- HTTP and watch parsing, from memory -----------------------------------------------------------


class FakeWriter:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str) -> Any:
        return None

    def requests(self) -> list[str]:
        return [r for r in self.data.decode().split("\r\n\r\n") if r]


def response(status: int, body: bytes | dict[str, Any], *, reason: str = "OK", chunked: bool = False,
             extra: str = "") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if chunked:
        framed = b"".join(f"{len(raw[i:i + 7]):x}\r\n".encode() + raw[i:i + 7] + b"\r\n"
                          for i in range(0, len(raw), 7)) + b"0\r\n\r\n"
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
        return head.encode() + framed
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n{extra}\r\n"
    return head.encode() + raw


class Conns:
    """Stands in for KubeClient._open: each new connection gets the next scripted answer bytes."""

    def __init__(self, scripts: Sequence[bytes | Callable[[asyncio.StreamReader], None]]) -> None:
        self.scripts = list(scripts)
        self.writers: list[FakeWriter] = []
        self.readers: list[asyncio.StreamReader] = []

    async def __call__(self) -> tuple[asyncio.StreamReader, FakeWriter]:
        reader = asyncio.StreamReader()
        script = self.scripts.pop(0)
        if callable(script):
            script(reader)
        else:
            reader.feed_data(script)
        writer = FakeWriter()
        self.readers.append(reader)
        self.writers.append(writer)
        return reader, writer


def client(conns: Conns, **kwargs: Any) -> kc.KubeClient:
    c = kc.KubeClient(kc.KubeConfig(server="http://apiserver:8080", token="tok"), **kwargs)
    c._open = conns  # type: ignore[method-assign,assignment]
    return c


def node(name: str, rv: str) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "resourceVersion": rv},
            "spec": {"podCIDR": "10.244.1.0/24"}}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}


async def test_get_node_request_and_keepalive_reuse() -> None:
    conns = Conns([response(200, node("n1", "5")) + response(200, node("n1", "6"), chunked=True)])
    c = client(conns)
    assert (await c.get_node("n1"))["metadata"]["resourceVersion"] == "5"
    assert (await c.get_node("n1"))["metadata"]["resourceVersion"] == "6"
    assert len(conns.writers) == 1  # both requests on one keep-alive connection
    first = conns.writers[0].requests()[0]
    assert first.startswith("GET /api/v1/nodes/n1 HTTP/1.1\r\n")
    assert "Host: apiserver:8080" in first and "Authorization: Bearer tok" in first
    await c.close()


async def test_stale_keepalive_connection_is_replaced_once() -> None:
    def eof_after_first(reader: asyncio.StreamReader) -> None:
        reader.feed_data(response(200, node("n1", "5")))
        reader.feed_eof()  # the server closes the idle connection

    conns = Conns([eof_after_first, response(200, node("n1", "7"))])
    c = client(conns)
    await c.get_node("n1")
    assert (await c.get_node("n1"))["metadata"]["resourceVersion"] == "7"
    assert len(conns.writers) == 2
    await c.close()


async def test_fresh_connection_failure_is_unavailable_not_retried() -> None:
    def eof(reader: asyncio.StreamReader) -> None:
        reader.feed_eof()

    conns = Conns([eof, eof])
    c = client(conns)
    with pytest.raises(kc.KubeUnavailableError, match='get nodes "n1": connection to http://apiserver:8080') as err:
        await c.get_node("n1")
    assert isinstance(err.value, StoreUnavailableError)
    assert len(conns.writers) == 1


async def test_no_answer_in_time_is_unavailable() -> None:
    conns = Conns([b""])  # connected, but the server never answers
    c = client(conns, timeout=0.05)
    with pytest.raises(kc.KubeUnavailableError, match=r"no answer from http://apiserver:8080 within 0\.05s"):
        await c.list_nodes()


async def test_connection_refused_is_unavailable() -> None:
    c = kc.KubeClient(kc.KubeConfig(server="http://apiserver:8080"))

    async def refuse() -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    c._open = refuse  # type: ignore[method-assign]
    with pytest.raises(kc.KubeUnavailableError, match="apiserver http://apiserver:8080 unreachable: Connection refused"):
        await c.get_pod("kube-flannel", "p")


async def test_forbidden_names_verb_resource_and_missing_permission() -> None:
    msg = ('nodes "n1" is forbidden: User "system:serviceaccount:kube-flannel:flannel" cannot patch '
           'resource "nodes/status" in API group "" at the cluster scope')
    conns = Conns([response(403, status(403, "Forbidden", msg), reason="Forbidden")])
    c = client(conns)
    with pytest.raises(kc.KubeApiError) as err:
        await c.patch_node_status("n1", {"metadata": {"annotations": {"a": "b"}}})
    e = err.value
    assert (e.status, e.reason, e.message) == (403, "Forbidden", msg)
    assert str(e) == f'patch nodes/status "n1": 403 Forbidden: {msg}'
    assert not isinstance(e, StoreUnavailableError) and not e.retryable
    req = conns.writers[0].requests()
    assert req[0].startswith("PATCH /api/v1/nodes/n1/status HTTP/1.1")
    assert "Content-Type: application/strategic-merge-patch+json" in req[0]
    assert json.loads(req[1]) == {"metadata": {"annotations": {"a": "b"}}}


async def test_error_without_status_body_and_retryable() -> None:
    conns = Conns([response(503, b"<html>upstream down</html>", reason="Service Unavailable")])
    c = client(conns)
    with pytest.raises(kc.KubeApiError) as err:
        await c.get_pod("ns1", "p1")
    assert err.value.status == 503 and err.value.retryable
    assert str(err.value) == 'get pods "p1" in namespace \'ns1\': 503 ServiceUnavailable: <html>upstream down</html>'


async def test_list_pages_and_expired_continue() -> None:
    page1 = {"kind": "NodeList", "metadata": {"resourceVersion": "10", "continue": "tok1"}, "items": [node("a", "3")]}
    page2 = {"kind": "NodeList", "metadata": {"resourceVersion": "10"}, "items": [node("b", "4")]}
    conns = Conns([response(200, page1) + response(200, page2)])
    c = client(conns)
    items, rv = await c.list_nodes()
    assert [i["metadata"]["name"] for i in items] == ["a", "b"] and rv == "10"
    reqs = [r.split("\r\n")[0] for r in conns.writers[0].requests()]
    assert reqs == ["GET /api/v1/nodes?limit=500 HTTP/1.1", "GET /api/v1/nodes?limit=500&continue=tok1 HTTP/1.1"]

    gone = status(410, "Expired", "The provided continue parameter is too old")
    full = {"kind": "NodeList", "metadata": {"resourceVersion": "12"}, "items": [node("a", "3"), node("b", "4")]}
    conns = Conns([response(200, page1) + response(410, gone, reason="Gone") + response(200, full)])
    c = client(conns)
    items, rv = await c.list_nodes()
    assert len(items) == 2 and rv == "12"
    assert conns.writers[0].requests()[-1].split("\r\n")[0] == "GET /api/v1/nodes HTTP/1.1"


async def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("one\n")
    conns = Conns([response(200, node("n", "1")) * 2])
    c = kc.KubeClient(kc.KubeConfig(server="http://h:1", token_file=str(tok)))
    c._open = conns  # type: ignore[method-assign,assignment]
    await c.get_node("n")
    tok.write_text("two\n")
    os.utime(tok, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    await c.get_node("n")
    reqs = conns.writers[0].requests()
    assert "Authorization: Bearer one" in reqs[0] and "Authorization: Bearer two" in reqs[1]


def watch_body(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def watch_response(chunks: Sequence[bytes], end: bool = True) -> Callable[[asyncio.StreamReader], None]:
    def script(reader: asyncio.StreamReader) -> None:
        reader.feed_data(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in chunks:
            reader.feed_data(f"{len(chunk):x};ext=1\r\n".encode() + chunk + b"\r\n")
        if end:
            reader.feed_data(b"0\r\nX-Trailer: yes\r\n\r\n")
            reader.feed_eof()

    return script


async def collect(stream: kc.WatchStream) -> list[tuple[str, dict[str, Any]]]:
    return [ev async for ev in stream]


async def test_watch_events_split_across_chunks_and_bookmarks() -> None:
    body = watch_body(
        {"type": "ADDED", "object": node("n1", "11")},
        {"type": "MODIFIED", "object": node("n1", "12")},
        {"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": "15"}}},
        {"type": "DELETED", "object": node("n1", "16")},
    )
    # Chunk boundaries anywhere: inside an event, several events in one chunk, 1-byte chunks.
    cuts = [0, 5, 6, 40, 41, len(body) // 2, len(body) - 1, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    conns = Conns([watch_response(chunks)])
    c = client(conns)
    stream = c.watch_nodes("10", timeout_seconds=60)
    events = await collect(stream)
    assert [(t, o["metadata"]["resourceVersion"]) for t, o in events] == [
        ("ADDED", "11"), ("MODIFIED", "12"), ("BOOKMARK", "15"), ("DELETED", "16")]
    assert stream.resource_version == "16"
    target = conns.writers[0].requests()[0].split("\r\n")[0]
    assert target == ("GET /api/v1/nodes?watch=1&resourceVersion=10&timeoutSeconds=60"
                      "&allowWatchBookmarks=true HTTP/1.1")


async def test_watch_without_bookmarks_query() -> None:
    conns = Conns([watch_response([])])
    c = client(conns)
    assert await collect(c.watch_nodes("3", allow_bookmarks=False, timeout_seconds=5)) == []
    assert "allowWatchBookmarks" not in conns.writers[0].requests()[0]


async def test_watch_error_event_410_raises_gone() -> None:
    body = watch_body(
        {"type": "ADDED", "object": node("n1", "11")},
        {"type": "ERROR", "object": status(410, "Expired", "too old resource version: 5 (20)")},
    )
    conns = Conns([watch_response([body[:30], body[30:]])])
    c = client(conns)
    stream = c.watch_nodes("5")
    assert (await stream.__anext__())[0] == "ADDED"
    with pytest.raises(kc.GoneError) as err:
        await stream.__anext__()
    assert err.value.status == 410 and err.value is not None
    assert str(err.value) == "watch nodes: 410 Expired: too old resource version: 5 (20)"
    assert kc.WatchExpired is kc.GoneError
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()  # the stream is over after an ERROR


async def test_watch_error_event_other_status() -> None:
    body = watch_body({"type": "ERROR", "object": status(500, "InternalError", "etcd down")})
    c = client(Conns([watch_response([body])]))
    with pytest.raises(kc.KubeApiError) as err:
        await collect(c.watch_nodes("5"))
    assert not isinstance(err.value, kc.GoneError) and err.value.status == 500


async def test_watch_refused_with_http_410_and_403() -> None:
    gone = response(410, status(410, "Gone", "too old"), reason="Gone")
    c = client(Conns([gone]))
    with pytest.raises(kc.GoneError):
        await collect(c.watch_nodes("1"))
    msg = 'nodes is forbidden: User "u" cannot watch resource "nodes" in API group "" at the cluster scope'
    c = client(Conns([response(403, status(403, "Forbidden", msg), reason="Forbidden")]))
    with pytest.raises(kc.KubeApiError, match=f"^watch nodes: 403 Forbidden: {msg}$"):
        await collect(c.watch_nodes("1"))


async def test_watch_garbage_and_broken_stream_are_unavailable() -> None:
    c = client(Conns([watch_response([b'{"type": "ADDED", "object": {}}\nnot json\n'])]))
    stream = c.watch_nodes("1")
    assert (await stream.__anext__())[0] == "ADDED"
    with pytest.raises(kc.KubeUnavailableError, match="not JSON"):
        await stream.__anext__()

    c = client(Conns([watch_response([b'{"type": "ADDED", "obj'], end=False)]))
    stream = c.watch_nodes("1")
    conns_reader = c._open.readers  # type: ignore[attr-defined]

    async def cut() -> None:
        await asyncio.sleep(0.01)
        conns_reader[0].feed_eof()

    task = asyncio.create_task(cut())
    with pytest.raises(kc.KubeUnavailableError, match="stream broke"):
        await stream.__anext__()
    await task


async def test_watch_silence_is_unavailable() -> None:
    c = client(Conns([watch_response([], end=False)]))
    stream = c.watch_nodes("1", timeout_seconds=1)
    stream.read_timeout = 0.05
    with pytest.raises(kc.KubeUnavailableError, match="nothing from http://apiserver:8080"):
        await stream.__anext__()


def test_line_splitter_partial_lines_and_limit() -> None:
    s = kc.LineSplitter(max_line=10)
    assert s.feed(b'{"a"') == []
    assert s.feed(b':1}\n\n{"b":2}\r\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert s.tail() == b'{"c"'
    with pytest.raises(ValueError, match="longer than 10"):
        s.feed(b"x" * 11)


def test_decode_event_rejects_non_events() -> None:
    assert kc.decode_event(b'{"type":"ADDED","object":{"kind":"Node"}}') == ("ADDED", {"kind": "Node"})
    for bad in (b"[]", b'{"type":"ADDED"}', b'{"type":1,"object":{}}'):
        with pytest.raises(kc.KubeUnavailableError, match="not a watch event"):
            kc.decode_event(bad)


def test_api_error_from_status_objects() -> None:
    e = kc.api_error(500, status(410, "Expired", "too old"), verb="watch", resource="nodes")
    assert isinstance(e, kc.GoneError) and e.status == 410 and e.reason == "Expired"
    e = kc.api_error(404, b"", verb="get", resource='nodes "x"')
    assert str(e) == 'get nodes "x": 404 NotFound' and not isinstance(e, kc.GoneError)


def test_object_names_are_path_segments() -> None:
    with pytest.raises(ValueError):
        kc._seg("..")
    assert kc._seg("a/b") == "a%2Fb"


async def test_close_ends_open_watches() -> None:
    c = client(Conns([watch_response([watch_body({"type": "ADDED", "object": node("n1", "2")})], end=False)]))
    stream = c.watch_nodes("1")
    assert (await stream.__anext__())[0] == "ADDED"
    await c.close()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    with pytest.raises(kc.KubeUnavailableError, match="client closed"):
        await c.get_node("n1")
