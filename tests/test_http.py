"""The HTTP server over loopback sockets: routes, negotiation, limits, TLS, mTLS, basic auth."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from certs import Certificates, make_certificates
from sample_snapshot import CREATED_AT_SECONDS, sample_snapshot
from scaleprobe.exporter.api import capacity_document, curves_document
from scaleprobe.exporter.http import (
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE_BYTES,
    App,
    Server,
    default_exposition,
    parse_listen_address,
    serve,
)
from scaleprobe.exporter.snapshot import Snapshot
from scaleprobe.exporter.webconfig import WebConfig, load_web_config
from scaleprobe.models.errors import InputError

NOW = CREATED_AT_SECONDS + 5
PASSWORD = "correct horse battery staple"


class Holder:
    """The daemon's "latest snapshot" slot: swapped whole, read at every request."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot

    def __call__(self) -> Snapshot | None:
        return self.snapshot


@pytest.fixture
def holder() -> Holder:
    return Holder(sample_snapshot())


@pytest.fixture
def server(holder: Holder) -> Iterator[Server]:
    running = serve(holder, "127.0.0.1:0", status_page=render_page, clock=lambda: NOW)
    yield running
    running.shutdown()


def render_page(document: dict[str, Any]) -> str:
    return f"<html><body>{len(document['devices'])} devices</body></html>"


def get(
    server: Server,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", server.port, timeout=30
        )
    else:
        connection = http.client.HTTPSConnection(
            "localhost", server.port, timeout=30, context=context
        )
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw_exchange(server: Server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_metrics_text_format(server: Server) -> None:
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'scaleprobe_up{device="cpu"} 1.0' in text
    assert "scaleprobe_collector_success 1.0" in text
    assert "process_resident_memory_bytes" in text


def test_metrics_openmetrics_when_asked(server: Server) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = get(server, "/metrics", headers={"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_metrics_gzip_when_accepted(server: Server) -> None:
    status, headers, body = get(server, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert b"scaleprobe_build_info" in gzip.decompress(body)


def test_a_kept_alive_connection_is_not_held_by_nagle_and_delayed_acks(server: Server) -> None:
    """Prometheus scrapes over one kept-alive connection. Headers and body are two writes; with
    Nagle's algorithm on the server's socket, the body waits for the client's delayed ACK of the
    headers, at least 40 ms (Linux's minimum delayed-ACK time) on every request but the first.
    The fastest of the later scrapes shows it whatever the machine's load (load only adds)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    latencies = []
    try:
        for _ in range(8):
            started = time.perf_counter()
            connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            latencies.append(time.perf_counter() - started)
    finally:
        connection.close()
    assert min(latencies[1:]) < 0.030, latencies


def test_head_sends_headers_only(server: Server) -> None:
    status, headers, body = get(server, "/metrics", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) > 1000
    assert body == b""


def test_api_documents_match_the_builders(server: Server, holder: Holder) -> None:
    status, headers, body = get(server, "/api/v1/capacity")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == capacity_document(holder.snapshot, NOW)
    status, _, body = get(server, "/api/v1/curves")
    assert status == 200
    assert json.loads(body) == curves_document(holder.snapshot, NOW)


def test_readiness_follows_the_snapshot(server: Server, holder: Holder) -> None:
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/readyz")[:1] == (200,)
    holder.snapshot = None
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert b"no calibration yet" in body
    assert get(server, "/healthz")[0] == 200
    holder.snapshot = sample_snapshot()
    status, _, body = get(server, "/readyz")
    assert (status, body) == (200, b"ready: calibrated cpu\n")


def test_status_page_gets_the_curves_document(server: Server) -> None:
    status, headers, body = get(server, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == b"<html><body>2 devices</body></html>"


def test_landing_page_without_a_status_page(tmp_path: Path) -> None:
    exposition = default_exposition(sample_snapshot)
    app = App(sample_snapshot, exposition, None, lambda: NOW, None, tmp_path)
    response = app.respond("/", {})
    assert response.status == 200
    assert b'href="metrics"' in response.body


def test_static_files_only_from_the_static_dir(tmp_path: Path, holder: Holder) -> None:
    static = tmp_path / "static"
    (static / "css").mkdir(parents=True)
    (static / "css" / "page.css").write_text("body { color: black }")
    (static / ".hidden").write_text("no")
    (tmp_path / "secret.txt").write_text("top secret")
    running = serve(holder, "127.0.0.1:0", status_page=render_page, static_dir=static)
    try:
        status, headers, body = get(running, "/static/css/page.css")
        assert (status, body) == (200, b"body { color: black }")
        assert headers["Content-Type"] == "text/css; charset=utf-8"
        for path in (
            "/static/../secret.txt",
            "/static/%2e%2e/secret.txt",
            "/static/css/../../secret.txt",
            "/static/.hidden",
            "/static/",
            "/static/css",
            "/static//etc/passwd",
        ):
            status, _, body = get(running, path)
            assert status == 404, path
            assert b"top secret" not in body
    finally:
        running.shutdown()


def test_unknown_paths_and_methods(server: Server) -> None:
    assert get(server, "/nope")[0] == 404
    status, headers, _ = get(server, "/metrics", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert get(server, "/metrics", method="DELETE")[0] == 405


def test_request_line_and_header_limits(server: Server) -> None:
    long_path = "/" + "a" * MAX_REQUEST_LINE_BYTES
    reply = raw_exchange(server, f"GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 414")
    headers = "".join(
        f"X-Filler-{i}: {'b' * 1000}\r\n" for i in range(MAX_HEADER_BYTES // 1000 + 2)
    )
    request = f"GET /metrics HTTP/1.1\r\nConnection: close\r\n{headers}\r\n"
    reply = raw_exchange(server, request.encode())
    assert reply.startswith(b"HTTP/1.1 431")
    reply = raw_exchange(server, b"GET /metrics NOT-HTTP/1.1\r\n\r\n")
    assert b"Error code: 400" in reply  # http.server answers a bad version HTTP/0.9-style
    assert get(server, "/healthz")[0] == 200  # and the server is still there


def test_an_idle_connection_does_not_block_others(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
        idle.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finishes its headers
        assert get(server, "/healthz")[0] == 200


def test_a_silent_client_is_disconnected(holder: Holder) -> None:
    running = serve(holder, "127.0.0.1:0", client_timeout_seconds=0.3)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            assert slow.recv(1024) == b""  # the server hung up (long before our 30 s)
        assert get(running, "/healthz")[0] == 200
    finally:
        running.shutdown()


def test_a_failing_page_is_a_500_and_the_server_lives_on(holder: Holder) -> None:
    def broken_page(document: dict[str, Any]) -> str:
        raise RuntimeError("template bug")

    running = serve(holder, "127.0.0.1:0", status_page=broken_page)
    try:
        status, _, body = get(running, "/")
        assert status == 500
        assert b"template bug" not in body
        assert get(running, "/metrics")[0] == 200
    finally:
        running.shutdown()


def test_concurrent_scrapes_all_succeed(server: Server, holder: Holder) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def scrape() -> None:
        for _ in range(5):
            status = get(server, "/metrics", headers={"Accept-Encoding": "gzip"})[0]
            with lock:
                results.append(status)
            holder.snapshot = sample_snapshot()  # swapped while others read

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 40


def test_shutdown_is_idempotent_and_frees_the_port(holder: Holder) -> None:
    running = serve(holder, "127.0.0.1:0")
    port = running.port
    running.shutdown()
    running.shutdown()
    again = serve(holder, f"127.0.0.1:{port}")
    again.shutdown()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9478", ("", 9478)),
        ("127.0.0.1:9478", ("127.0.0.1", 9478)),
        ("[::1]:9478", ("::1", 9478)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9478", "::1:9478", "host:", "host:http", ":70000", "[::1]"])
def test_bad_listen_addresses(address: str) -> None:
    with pytest.raises(InputError, match=r"expected HOST:PORT, e\.g\. :9478"):
        parse_listen_address(address)


def test_all_interfaces_and_ipv6(holder: Holder) -> None:
    everywhere = serve(holder, ":0")
    try:
        assert get(everywhere, "/healthz")[0] == 200  # reached on 127.0.0.1
    finally:
        everywhere.shutdown()
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        ipv6 = serve(holder, "[::1]:0")
    except InputError as error:
        pytest.skip(f"no IPv6 loopback: {error}")
    try:
        connection = http.client.HTTPConnection("::1", ipv6.port, timeout=30)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        assert ipv6.url == f"http://[::1]:{ipv6.port}"
    finally:
        ipv6.shutdown()


def test_a_port_in_use_is_a_clear_input_error(server: Server, holder: Holder) -> None:
    with pytest.raises(InputError, match="cannot listen"):
        serve(holder, f"127.0.0.1:{server.port}")


# --- TLS and basic auth ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def client_context(certificates: Certificates, with_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca_file))
    if with_client_cert:
        context.load_cert_chain(certificates.client_cert_file, certificates.client_key_file)
    return context


def web_config(tmp_path: Path, certificates: Certificates, extra: str = "") -> WebConfig:
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certificates.server_cert_file}\n"
        f"  key_file: {certificates.server_key_file}\n" + extra
    )
    return load_web_config(path)


def test_tls(tmp_path: Path, certificates: Certificates, holder: Holder) -> None:
    running = serve(holder, "127.0.0.1:0", web_config(tmp_path, certificates))
    try:
        assert running.url.startswith("https://")
        status, _, body = get(running, "/metrics", context=client_context(certificates))
        assert status == 200
        assert b"scaleprobe_up" in body
        # plain HTTP to the TLS port fails the handshake; the server carries on
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            get(running, "/metrics")
        with pytest.raises(ssl.SSLCertVerificationError):
            get(running, "/metrics", context=ssl.create_default_context())  # unknown CA
        assert get(running, "/healthz", context=client_context(certificates))[0] == 200
    finally:
        running.shutdown()


def test_mutual_tls(tmp_path: Path, certificates: Certificates, holder: Holder) -> None:
    config = web_config(
        tmp_path,
        certificates,
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {certificates.ca_file}\n",
    )
    running = serve(holder, "127.0.0.1:0", config)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(running, "/metrics", context=client_context(certificates))
        context = client_context(certificates, with_client_cert=True)
        assert get(running, "/metrics", context=context)[0] == 200
    finally:
        running.shutdown()


def test_basic_auth(tmp_path: Path, holder: Holder, caplog: pytest.LogCaptureFixture) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    running = serve(holder, "127.0.0.1:0", load_web_config(path))
    try:
        with caplog.at_level(logging.DEBUG):
            for headers in ({}, basic("prometheus", "wrong"), basic("nobody", PASSWORD)):
                status, reply_headers, body = get(running, "/metrics", headers=headers)
                assert status == 401
                assert reply_headers["WWW-Authenticate"].startswith('Basic realm="scaleprobe"')
                assert b"scaleprobe_" not in body
            assert get(running, "/api/v1/capacity")[0] == 401
            assert get(running, "/api/v1/curves")[0] == 401
            assert get(running, "/")[0] == 401
            assert get(running, "/metrics", method="POST")[0] == 401
            # Kubernetes probes need no credentials
            assert get(running, "/healthz")[0] == 200
            assert get(running, "/readyz")[0] == 200
            good = basic("prometheus", PASSWORD)
            status, _, body = get(running, "/metrics", headers=good)
            assert status == 200
            assert b"scaleprobe_up" in body
            assert get(running, "/api/v1/curves", headers=good)[0] == 200
        logged = [str(vars(record)) for record in caplog.records]
        assert any("'path': '/metrics'" in line for line in logged)  # requests are logged,
        for line in logged:  # credentials are not
            assert PASSWORD not in line
            assert good["Authorization"].split()[1] not in line
    finally:
        running.shutdown()


def test_tls_and_basic_auth_together(
    tmp_path: Path, certificates: Certificates, holder: Holder
) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    extra = f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    running = serve(holder, "127.0.0.1:0", web_config(tmp_path, certificates, extra))
    try:
        context = client_context(certificates)
        assert get(running, "/metrics", context=context)[0] == 401
        good = basic("prometheus", PASSWORD)
        assert get(running, "/metrics", headers=good, context=context)[0] == 200
    finally:
        running.shutdown()


def test_serving_never_loads_torch() -> None:
    """The exporter side stays small: serving a snapshot imports neither torch nor transformers
    (ruff's banned-API rule checks the source; this checks what really gets imported)."""
    code = (
        "import sys\n"
        "from scaleprobe.exporter import api, collector, http, webconfig\n"
        "server = http.serve(lambda: None, '127.0.0.1:0')\n"
        "server.shutdown()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
