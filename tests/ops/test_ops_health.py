"""flanneld.health over real loopback sockets on an ephemeral port (no fixed ports)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from flanneld import health
from flanneld.health import HealthServer, Readiness
from flanneld.metrics import Metrics

pytestmark = pytest.mark.unit


async def request(port: int, raw: bytes, *, read_timeout: float = 5.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(read_timeout):
            data = await reader.read()
    except ConnectionResetError:  # closed by the server without reading the request
        data = b""
    finally:
        writer.close()
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def get(port: int, path: str) -> tuple[int, bytes]:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def run(body: Callable[[HealthServer, Readiness], Awaitable[None]], **kw: float | int) -> None:
    async def main() -> None:
        readiness = Readiness()
        metrics = Metrics(backend="vxlan")
        readiness.add_listener(lambda ready, _reason: metrics.set_ready(ready))
        async with HealthServer(readiness, metrics.render, port=0, **kw) as srv:  # type: ignore[arg-type]
            assert srv.port != 0
            await body(srv, readiness)

    asyncio.run(main())


def test_healthz_and_metrics() -> None:
    async def body(srv: HealthServer, _r: Readiness) -> None:
        assert await get(srv.port, "/healthz") == (200, b"running")
        status, text = await get(srv.port, "/metrics")
        assert status == 200
        assert b"flannel_build_info" in text
        assert b"flannel_ready 0.0" in text
        assert (await get(srv.port, "/nope"))[0] == 404
        assert (await request(srv.port, b"POST /healthz HTTP/1.1\r\n\r\n"))[0] == 405
        status, text = await request(srv.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert status == 200 and text == b""
        # bare LF line endings and a query string are tolerated
        assert (await request(srv.port, b"GET /healthz?x=1 HTTP/1.0\n\n"))[0] == 200

    run(body)


def test_readyz_follows_readiness() -> None:
    async def body(srv: HealthServer, r: Readiness) -> None:
        status, text = await get(srv.port, "/readyz")
        assert status == 503 and b"lease" in text and b"subnet.env" in text
        r.set_lease_held(True)
        r.set_backend_programmed(True)
        status, text = await get(srv.port, "/readyz")
        assert status == 503 and text == b"waiting for: subnet.env\n"
        r.set_subnet_file_written(True)
        assert await get(srv.port, "/readyz") == (200, b"ready\n")
        assert b"flannel_ready 1.0" in (await get(srv.port, "/metrics"))[1]
        r.set_lease_held(False)
        assert await get(srv.port, "/readyz") == (503, b"lease lost\n")
        assert b"flannel_ready 0.0" in (await get(srv.port, "/metrics"))[1]
        r.set_lease_held(True)
        assert (await get(srv.port, "/readyz"))[0] == 200

    run(body)


def test_readiness_listener_called_on_change_only() -> None:
    r = Readiness()
    seen: list[tuple[bool, str]] = []
    r.add_listener(lambda ready, reason: seen.append((ready, reason)))
    r.set_backend_programmed(True)
    r.set_backend_programmed(True)
    r.set_lease_held(True)
    r.set_subnet_file_written(True)
    r.set_subnet_file_written(True)
    assert seen == [
        (False, "waiting for: lease, backend, subnet.env"),
        (False, "waiting for: lease, subnet.env"),
        (False, "waiting for: subnet.env"),
        (True, "ready"),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz SPDY/3\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello, then EOF
    ],
)
def test_garbage_gets_400_and_server_survives(raw: bytes) -> None:
    async def body(srv: HealthServer, _r: Readiness) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(raw)
        writer.write_eof()
        async with asyncio.timeout(5):
            data = await reader.read()
        writer.close()
        assert data.startswith(b"HTTP/1.1 400 ")
        assert await get(srv.port, "/healthz") == (200, b"running")

    run(body)


def test_oversized_request_is_refused() -> None:
    async def body(srv: HealthServer, _r: Readiness) -> None:
        raw = b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n\r\n"
        assert (await request(srv.port, raw))[0] == 431
        many = b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 400 + b"\r\n"
        assert (await request(srv.port, many))[0] == 431
        assert (await get(srv.port, "/healthz"))[0] == 200

    run(body, max_request_bytes=1024)


def test_slow_client_times_out_without_blocking_others() -> None:
    async def body(srv: HealthServer, _r: Readiness) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes the head
        await writer.drain()
        # Others are served meanwhile.
        assert (await get(srv.port, "/healthz"))[0] == 200
        async with asyncio.timeout(5):
            data = await reader.read()
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ")

    run(body, request_timeout=0.3)


def test_connection_limit_evicts_the_oldest_idle() -> None:
    async def body(srv: HealthServer, _r: Readiness) -> None:
        idle = []
        for _ in range(2):
            idle.append(await asyncio.open_connection("127.0.0.1", srv.port))
            # Let the server accept each idle connection before the next one arrives.
            for _ in range(100):
                if srv._active == len(idle):
                    break
                await asyncio.sleep(0.01)
        assert srv._active == 2
        try:
            # At the limit a new client is answered; the oldest idle one makes room ...
            assert await get(srv.port, "/healthz") == (200, b"running")
            assert srv.evicted_connections == 1
            async with asyncio.timeout(5):
                assert await idle[0][0].read() == b""  # ... closed by the server, no answer
            # ... and the newer idle one is still held.
            assert srv._active == 1 and not idle[1][0].at_eof()
        finally:
            for _, w in idle:
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
        for _ in range(100):
            if srv._active == 0:
                break
            await asyncio.sleep(0.01)
        assert srv._active == 0
        assert (await get(srv.port, "/healthz"))[0] == 200

    run(body, max_connections=2)


def test_default_connection_limit_follows_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def limit(soft: int) -> int:
        monkeypatch.setattr(health.resource, "getrlimit", lambda _which: (soft, soft))
        return HealthServer(Readiness()).max_connections

    assert limit(1_048_576) == 1024
    assert limit(health.resource.RLIM_INFINITY) == 1024
    assert limit(1024) == 512
    assert limit(100) == 64
    assert HealthServer(Readiness(), max_connections=7).max_connections == 7
    with pytest.raises(ValueError):
        HealthServer(Readiness(), max_connections=0)


def test_close_ends_idle_connections_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        srv = HealthServer(Readiness(), port=0)
        await srv.start()
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /heal")
        await writer.drain()
        for _ in range(100):
            if srv._active == 1:
                break
            await asyncio.sleep(0.01)
        async with asyncio.timeout(2):
            await srv.close()
        assert srv._active == 0
        writer.close()
        # /metrics without a renderer is 404; a new server on port 0 gets another port
        async with HealthServer(Readiness(), port=0) as again:
            assert (await get(again.port, "/metrics"))[0] == 404

    asyncio.run(main())
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
