"""Access to a real daemon: TLS and client certificates from the web config, basic auth with
bcrypt hashes on every endpoint, no password in the log, malformed HTTP (bad methods, huge
headers, an endless header line, slow clients, path traversal) answered with an error while the
daemon stays up, and listening only where configured.

Certificates are made in the test with ``cryptography`` (``tests/certs.py``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from certs import Certificates, make_certificates
from test_faults_worker import FAKE_WORKER, DaemonProcess, daemon_config, up

PASSWORD = "s3cret-horse-battery"
PROTECTED = ("/metrics", "/api/v1/capacity", "/api/v1/curves", "/", "/static/status.css")


def slow_config(tmp_path: Path) -> dict[str, object]:
    """One good cycle at start, then none for an hour: the data stays put."""
    return daemon_config(
        tmp_path, [sys.executable, FAKE_WORKER], schedule={"interval_seconds": 3600}
    )


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, bytes]:
    if context is None:
        connection = http.client.HTTPConnection(host, port, timeout=20)
    else:
        connection = http.client.HTTPSConnection("localhost", port, timeout=20, context=context)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send bytes as they are; return whatever comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def client_context(
    certificates: Certificates, client: Certificates | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca_file))
    if client is not None:
        context.load_cert_chain(client.client_cert_file, client.client_key_file)
    return context


# --- TLS and basic auth -------------------------------------------------------------------------


@pytest.mark.integration
def test_tls_and_basic_auth_guard_every_endpoint_and_the_password_is_never_logged(
    tmp_path: Path, certificates: Certificates
) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(6)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certificates.server_cert_file}\n"
        f"  key_file: {certificates.server_key_file}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    daemon = DaemonProcess(
        tmp_path, slow_config(tmp_path), "--web.config.file", str(web), "--log.level", "debug"
    )
    context = client_context(certificates)
    good = basic("prometheus", PASSWORD)
    try:
        deadline = time.monotonic() + 30
        while request(daemon.port, "/readyz", context=context)[0] != 200:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.2)
        for path in PROTECTED:
            for headers in (
                {},
                basic("prometheus", "wrong"),
                basic("nobody", PASSWORD),
                basic("prometheus", ""),
                {"Authorization": "Bearer " + PASSWORD},
                {"Authorization": "Basic !!!not-base64"},
            ):
                for method in ("GET", "HEAD", "POST"):
                    status, body = request(
                        daemon.port, path, method=method, headers=headers, context=context
                    )
                    assert status == 401, (path, headers, method)
                    assert b"scaleprobe_" not in body and b"devices" not in body
            status, body = request(daemon.port, path, headers=good, context=context)
            assert status == 200, path
            assert body
        status, body = request(daemon.port, "/metrics", headers=good, context=context)
        assert b'scaleprobe_up{device="cpu"} 1.0' in body
        # liveness and readiness answer without credentials and give no data away
        for path in ("/healthz", "/readyz"):
            status, body = request(daemon.port, path, context=context)
            assert status == 200 and len(body) < 100 and b"scaleprobe_" not in body
        # plain HTTP to the TLS port, and a client that does not trust the CA: refused
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            request(daemon.port, "/metrics", headers=good)
        with pytest.raises(ssl.SSLCertVerificationError):
            request(daemon.port, "/metrics", headers=good, context=ssl.create_default_context())
        assert request(daemon.port, "/metrics", headers=good, context=context)[0] == 200
    finally:
        assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert 'msg="http request"' in log  # requests were logged (debug), so the check means much
    for secret in (PASSWORD, good["Authorization"].split()[1], hashed):
        assert secret not in log
    assert "Traceback" not in log


@pytest.mark.integration
def test_client_certificates_are_required_and_verified(
    tmp_path: Path, certificates: Certificates
) -> None:
    stranger = make_certificates(tmp_path / "other-ca")  # a client cert from another CA
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certificates.server_cert_file}\n"
        f"  key_file: {certificates.server_key_file}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {certificates.ca_file}\n"
    )
    daemon = DaemonProcess(tmp_path, slow_config(tmp_path), "--web.config.file", str(web))
    try:
        for context in (client_context(certificates), client_context(certificates, stranger)):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                request(daemon.port, "/metrics", context=context)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
            request(daemon.port, "/healthz", context=client_context(certificates))
        status, body = request(
            daemon.port, "/metrics", context=client_context(certificates, certificates)
        )
        assert status == 200 and b"scaleprobe_build_info" in body
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "Traceback" not in daemon.log()


# --- malformed HTTP against a plain daemon ------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp_path = tmp_path_factory.mktemp("plain")
    daemon = DaemonProcess(tmp_path, slow_config(tmp_path))
    try:
        daemon.wait_for(lambda s: up(s) == 1.0, "a first cycle")
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log()
        assert "Traceback" not in daemon.log()


def assert_alive(daemon: DaemonProcess) -> None:
    assert daemon.process.poll() is None, daemon.log()
    assert request(daemon.port, "/healthz")[0] == 200


@pytest.mark.integration
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_methods_other_than_get_and_head_are_405(plain: DaemonProcess, method: str) -> None:
    status, body = request(plain.port, "/metrics", method=method)
    assert status == 405
    assert b"scaleprobe_" not in body
    assert_alive(plain)


MALFORMED = {
    "request line too long": (
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 414",
    ),
    "headers too large": (
        b"GET /metrics HTTP/1.1\r\n"
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 1000) for i in range(60))
        + b"\r\n",
        b"HTTP/1.1 431",
    ),
    "an endless header line": (
        b"GET /metrics HTTP/1.1\r\nX-Endless: " + b"e" * 200000,
        b"HTTP/1.1 431",
    ),
    "not HTTP": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",
        b"400",
    ),
    "a bad version": (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
    "a header without a colon": (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_get_an_error_and_the_daemon_stays_up(
    plain: DaemonProcess, case: str
) -> None:
    data, expected = MALFORMED[case]
    reply = raw(plain.port, data)
    assert expected in reply.split(b"\r\n", 1)[0] or expected in reply[:200], reply[:300]
    assert b"scaleprobe_up" not in reply
    assert_alive(plain)


TRAVERSALS = [
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/%252e%252e/%252e%252e/etc/passwd",
    "/static/....//....//....//etc/passwd",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/..\\..\\..\\..\\etc\\passwd",
    "/static/status.css/../../../../etc/passwd",
    "/static/status.css%00/../../../../etc/passwd",
    "/static/%00",
    "/static/" + "a" * 300,  # longer than a file name may be
    "/static/../../exporter/daemon.py",
    "/static/../http.py",
    "/static/%2e%2e/http.py",
    "/../../../etc/passwd",
    "//etc/passwd",
]


@pytest.mark.integration
def test_path_traversal_on_the_static_files_finds_nothing(plain: DaemonProcess) -> None:
    assert request(plain.port, "/static/status.css")[0] == 200  # the files are served
    for path in TRAVERSALS:
        reply = raw(
            plain.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.split()[1] in (b"400", b"404"), (path, status_line)
        assert b"root:" not in reply and b"import " not in reply, path
    assert_alive(plain)


@pytest.mark.integration
def test_slow_clients_do_not_keep_others_from_scraping(plain: DaemonProcess) -> None:
    """Slowloris: 100 sockets dribbling a header byte every half second hold their threads,
    while 30 ordinary scrapes all succeed, each within 2 s."""
    stop = threading.Event()
    sockets: list[socket.socket] = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", plain.port), timeout=20)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)

    def dribble() -> None:
        while not stop.wait(0.5):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        time.sleep(1.0)
        for _ in range(30):
            started = time.monotonic()
            status, body = request(plain.port, "/metrics")
            assert status == 200 and b"scaleprobe_up" in body
            assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        dribbler.join(timeout=5)
        for sock in sockets:
            sock.close()
    assert_alive(plain)


# --- where it listens ---------------------------------------------------------------------------


def other_local_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    try:
        output = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    for address in output.split():
        if "." in address and not address.startswith("127."):
            return address
    return None


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.integration
def test_it_listens_only_where_configured(plain: DaemonProcess, tmp_path: Path) -> None:
    other = other_local_address()
    if other is None:
        pytest.skip("this machine has no non-loopback address to try")
    # bound to 127.0.0.1: not reachable on the machine's other address
    assert reachable("127.0.0.1", plain.port)
    assert not reachable(other, plain.port)
    # bound to :PORT: every address
    everywhere = DaemonProcess(tmp_path, slow_config(tmp_path), listen=":0", name="everywhere")
    try:
        assert reachable("127.0.0.1", everywhere.port)
        assert reachable(other, everywhere.port)
        assert request(everywhere.port, "/healthz", host=other)[0] == 200
    finally:
        assert everywhere.stop() == 0, everywhere.log()
