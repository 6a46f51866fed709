"""The HTTP server: /metrics, the JSON API, health, the status page; TLS and basic auth.

Usage (the daemon does this)::

    server = serve(lambda: current_snapshot, ":9478", web_config=load_web_config(path))
    ...                                  # serves from a background thread
    server.shutdown()                    # stops accepting, closes the socket

``serve(get_snapshot, listen_address, web_config=None, status_page=None, *, exposition=None,
clock=time.time, stale_after_seconds=None, static_dir=STATIC_DIR,
client_timeout_seconds=CLIENT_TIMEOUT_SECONDS) -> Server``

- ``get_snapshot()`` returns the snapshot to serve (``None`` before the first cycle); it is read
  at every request, never mutated.
- ``listen_address`` as Prometheus exporters take it: ``:9478`` (all interfaces, IPv4 and IPv6),
  ``127.0.0.1:9478``, ``[::1]:9478``, ``localhost:0`` (port 0 picks a free port: read
  ``server.port``). A malformed address, or one that cannot be bound, raises ``InputError``.
- ``web_config``: a ``WebConfig`` (from ``webconfig.load_web_config``) for TLS and basic auth.
- ``status_page``: a function from the ``/api/v1/curves`` document to HTML for ``/``; by default
  ``scaleprobe.exporter.status_page.render_status_page`` if that module exists, else a plain
  landing page with links.
- ``exposition``: what ``/metrics`` serves (``exporter.exposition.Exposition``); by default a
  ``SnapshotCollector`` over ``get_snapshot``, encoded once per snapshot, and the process
  collector (RSS, CPU, open fds), encoded at every scrape.

Routes: ``/metrics`` (text format, or OpenMetrics when the Accept header asks; gzip when
accepted), ``/api/v1/capacity``, ``/api/v1/curves``, ``/healthz`` (the process answers),
``/readyz`` (200 once a calibration is available, 503 with the reason before), ``/``,
``/static/<file>`` (only files under ``static_dir``). Only GET and HEAD (405 otherwise).
With ``basic_auth_users`` every route asks for credentials except ``/healthz`` and ``/readyz``
(``HEALTH_PATHS``), so Kubernetes probes need none; they tell nothing but "alive" and "ready".

Robustness: each connection has its own thread (at most ``MAX_CONNECTIONS`` at once, beyond
that new connections are closed); a client silent for ``client_timeout_seconds``, mid-request
or idle on a kept-alive connection, is disconnected; the request line and the header section
have size limits (414 and 431 past them); the TLS handshake runs in the connection's thread,
so a slow or broken client cannot stall the others. An exception in a handler is logged and
answered with 500; it never stops the server. Requests are logged at debug level by method,
path and status only: never headers, so credentials never reach a log.
"""

from __future__ import annotations

import gzip
import http.client
import importlib
import json
import logging
import mimetypes
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import gzip_accepted
from scaleprobe.exporter.api import capacity_document, curves_document
from scaleprobe.exporter.collector import SnapshotCollector
from scaleprobe.exporter.exposition import Exposition
from scaleprobe.exporter.snapshot import Snapshot
from scaleprobe.exporter.webconfig import BasicAuth, WebConfig
from scaleprobe.models.errors import InputError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_REQUEST_LINE_BYTES = 8192
MAX_HEADER_BYTES = 32768
CLIENT_TIMEOUT_SECONDS = 10.0
# Threads are cheap while idle; each kept-alive scraper holds one. Enough for hundreds of
# concurrent scrapers (tests/test_load.py runs 200), still a bound on what a flood can take.
MAX_CONNECTIONS = 512
REALM = 'Basic realm="scaleprobe", charset="UTF-8"'
HEALTH_PATHS = ("/healthz", "/readyz")  # answered without credentials (Kubernetes probes)

StatusPage = Callable[[dict[str, Any]], str]


class Headers(Protocol):
    """What the routes read of the request headers (an email.message.Message or a dict)."""

    def get(self, name: str, default: str, /) -> str: ...


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def text(status: int, message: str, **headers: str) -> Response:
    return Response(status, (message + "\n").encode(), headers=dict(headers))


def parse_listen_address(address: str) -> tuple[str, int]:
    """``":9478"`` -> ``("", 9478)``; ``"[::1]:9478"`` -> ``("::1", 9478)``; else ``InputError``."""
    allowed = "expected HOST:PORT, e.g. :9478, 127.0.0.1:9478 or [::1]:9478"
    value = address.strip()
    if value.startswith("["):
        host, separator, port = value[1:].partition("]:")
    else:
        host, separator, port = value.rpartition(":")
        if ":" in host:
            separator = ""  # an IPv6 address must be bracketed
    if not separator or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise InputError(f"--web.listen-address {address!r}: {allowed}")
    return host, int(port)


def load_status_page() -> StatusPage | None:
    """``render_status_page`` from ``exporter/status_page.py``, if that module exists."""
    try:
        module = importlib.import_module("scaleprobe.exporter.status_page")
    except ModuleNotFoundError as error:
        if error.name != "scaleprobe.exporter.status_page":
            raise
        return None
    render: StatusPage = module.render_status_page
    return render


class App:
    """The routes, as a function of (method-checked) path and headers to a ``Response``."""

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        exposition: Exposition,
        status_page: StatusPage | None,
        clock: Callable[[], float],
        stale_after_seconds: float | None,
        static_dir: Path,
    ) -> None:
        self.get_snapshot = get_snapshot
        self.exposition = exposition
        self.status_page = status_page
        self.clock = clock
        self.stale_after_seconds = stale_after_seconds
        self.static_dir = static_dir.resolve()

    def respond(self, path: str, headers: Headers) -> Response:
        if path == "/metrics":
            return self.metrics(headers)
        if path == "/api/v1/capacity":
            return self.json(capacity_document(self.get_snapshot(), self.clock()))
        if path == "/api/v1/curves":
            return self.json(self.curves())
        if path == "/healthz":
            return text(200, "ok")
        if path == "/readyz":
            return self.ready()
        if path == "/":
            return self.index()
        if path.startswith("/static/"):
            return self.static(path.removeprefix("/static/"))
        return text(404, f"not found: {path} (see / for the endpoints)")

    def curves(self) -> dict[str, Any]:
        return curves_document(self.get_snapshot(), self.clock(), self.stale_after_seconds)

    def metrics(self, headers: Headers) -> Response:
        body, content_type = self.exposition.encode(headers.get("Accept", ""))
        extra = {"Vary": "Accept, Accept-Encoding", "Cache-Control": "no-store"}
        if gzip_accepted(headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            extra["Content-Encoding"] = "gzip"
        return Response(200, body, content_type, extra)

    def json(self, document: dict[str, Any]) -> Response:
        body = json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
        return Response(200, body, "application/json", {"Cache-Control": "no-store"})

    def ready(self) -> Response:
        snapshot = self.get_snapshot()
        if snapshot is None or not snapshot.devices:
            return text(
                503, "not ready: no calibration yet (the first probe cycle has not finished)"
            )
        calibrated = [d.device for d in snapshot.devices if d.calibration is not None]
        if not calibrated:
            names = ", ".join(d.device for d in snapshot.devices)
            return text(503, f"not ready: no device has a calibration yet ({names})")
        return text(200, f"ready: calibrated {', '.join(calibrated)}")

    def index(self) -> Response:
        html = LANDING_PAGE if self.status_page is None else self.status_page(self.curves())
        return Response(200, html.encode(), "text/html; charset=utf-8")

    def static(self, name: str) -> Response:
        try:
            candidate = (self.static_dir / unquote(name)).resolve()
            found = (
                bool(name)
                and candidate.is_relative_to(self.static_dir)
                and candidate.is_file()
                and not any(
                    part.startswith(".") for part in candidate.relative_to(self.static_dir).parts
                )
            )
        except (OSError, ValueError):  # a NUL byte, a name too long for the filesystem
            found = False
        if not found:
            return text(404, f"not found: /static/{name}")
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/javascript":
            content_type += "; charset=utf-8"
        return Response(200, candidate.read_bytes(), content_type, {"Cache-Control": "max-age=300"})


LANDING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>scaleprobe</title></head>
<body><h1>scaleprobe</h1>
<p>Probes this device on a schedule, refits a transformer performance model and exports measured
and predicted throughput, framework overhead, capacity and drift.</p>
<ul>
<li><a href="metrics">/metrics</a> — Prometheus metrics</li>
<li><a href="api/v1/capacity">/api/v1/capacity</a> — predicted capacity at the serving points</li>
<li><a href="api/v1/curves">/api/v1/curves</a> — measured points and predicted curves</li>
<li><a href="healthz">/healthz</a>, <a href="readyz">/readyz</a></li>
</ul></body></html>
"""


class _HeaderBudget:
    """Wraps the request stream: the request line and headers together may use at most
    ``MAX_HEADER_BYTES``; past that, http.server answers 431 (it catches ``LineTooLong``)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.remaining = MAX_HEADER_BYTES

    def reset(self) -> None:
        self.remaining = MAX_HEADER_BYTES

    def readline(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            raise http.client.LineTooLong("header section")
        limit = self.remaining + 1 if size < 0 else min(size, self.remaining + 1)
        line = self._raw.readline(limit)
        self.remaining -= len(line)
        if self.remaining < 0:
            raise http.client.LineTooLong("header section")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "scaleprobe"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection every scrape
    # The headers and the body go out in two writes; with Nagle's algorithm on, the second waits
    # for the client's delayed ACK of the first: 40 ms added to every scrape on a kept-alive
    # connection (measured: 44 ms p50 against 2 ms).
    disable_nagle_algorithm = True
    timeout = None  # set per server in setup()

    def setup(self) -> None:
        self.request.settimeout(self.server.client_timeout_seconds)
        super().setup()
        self.rfile = _HeaderBudget(self.rfile)  # type: ignore[assignment,arg-type]

    def handle_one_request(self) -> None:
        """http.server's loop with a smaller request-line limit and the header budget."""
        budget = self.rfile
        assert isinstance(budget, _HeaderBudget)
        budget.reset()
        try:
            self.raw_requestline = budget.readline(MAX_REQUEST_LINE_BYTES + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE_BYTES:
                self.requestline = self.request_version = self.command = ""
                self.close_connection = True
                self.send_error(414, f"request line longer than {MAX_REQUEST_LINE_BYTES} bytes")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return  # an error was sent
            if self.headers.defects:  # e.g. a line without a colon: the rest was dropped
                self.close_connection = True
                self.send_error(400, "malformed header section")
                return
            self.respond()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def respond(self) -> None:
        app = self.server.app
        path = self.path.partition("?")[0]
        auth = self.server.auth
        authorization = self.headers.get("Authorization")
        if auth is not None and path not in HEALTH_PATHS and auth.check(authorization) is None:
            self.send(text(401, "unauthorized", **{"WWW-Authenticate": REALM}))
            return
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # a request body, if any, is not read
            self.send(text(405, f"method {self.command} not allowed: use GET", Allow="GET, HEAD"))
            return
        try:
            response = app.respond(path, self.headers)
        except Exception:
            log.exception("request failed", extra={"path": path})
            response = text(500, "internal error (see the exporter's log)")
        self.send(response)

    def send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in {**self.server.extra_headers, **response.headers}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        raw_path = getattr(self, "path", "")  # unset when the request line was rejected
        path = raw_path.partition("?")[0] if raw_path.startswith("/") else "<not a path>"
        log.debug("http request", extra={"method": self.command, "path": path, "status": code})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # shutdown() must not wait for a slow client
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        app: App,
        web_config: WebConfig,
        client_timeout_seconds: float = CLIENT_TIMEOUT_SECONDS,
    ) -> None:
        self.client_timeout_seconds = client_timeout_seconds
        self.address_family = family
        self.app = app
        self.ssl_context = web_config.ssl_context()
        self.auth = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
        self.extra_headers = dict(web_config.headers)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler, bind_and_activate=False)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        TCPServer.server_bind(self)  # HTTPServer's would resolve our own name (slow DNS)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("too many connections, closing a new one", extra={"limit": MAX_CONNECTIONS})
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.client_timeout_seconds)
        if self.ssl_context is None:
            self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
            return
        try:
            tls_socket = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS handshake failed", extra={"error": str(error)})
            return
        try:
            self.RequestHandlerClass(tls_socket, client_address, self)  # type: ignore[arg-type]
        finally:
            tls_socket.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection failed", exc_info=True)


class Server:
    """A running server: ``url``, ``port``, and ``shutdown()`` (idempotent)."""

    def __init__(self, httpd: _Server, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self._stopped = False
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])
        self.scheme = "http" if httpd.ssl_context is None else "https"

    @property
    def url(self) -> str:
        """Base URL a local client can use (a wildcard address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def default_registry(get_snapshot: Callable[[], Snapshot | None]) -> CollectorRegistry:
    """The registry equivalent of ``default_exposition``: same families, same order."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(get_snapshot))
    ProcessCollector(registry=registry)
    return registry


def default_exposition(get_snapshot: Callable[[], Snapshot | None]) -> Exposition:
    """What ``/metrics`` serves: the snapshot's series, then the process collector's."""
    return Exposition(
        get_snapshot, SnapshotCollector(get_snapshot), [ProcessCollector(registry=None)]
    )


def _bind_address(host: str, port: int) -> tuple[tuple[Any, ...], socket.AddressFamily]:
    if host == "":
        if socket.has_dualstack_ipv6():
            return ("::", port), socket.AF_INET6
        return ("0.0.0.0", port), socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise InputError(f"--web.listen-address: cannot resolve {host!r} ({error})") from None
    family, _, _, _, sockaddr = infos[0]
    return sockaddr, family


def serve(
    get_snapshot: Callable[[], Snapshot | None],
    listen_address: str,
    web_config: WebConfig | None = None,
    status_page: StatusPage | None = None,
    *,
    exposition: Exposition | None = None,
    clock: Callable[[], float] = time.time,
    stale_after_seconds: float | None = None,
    static_dir: Path = STATIC_DIR,
    client_timeout_seconds: float = CLIENT_TIMEOUT_SECONDS,
) -> Server:
    """Bind ``listen_address`` and serve from a background thread; see the module docstring."""
    host, port = parse_listen_address(listen_address)
    address, family = _bind_address(host, port)
    app = App(
        get_snapshot,
        exposition if exposition is not None else default_exposition(get_snapshot),
        status_page if status_page is not None else load_status_page(),
        clock,
        stale_after_seconds,
        static_dir,
    )
    httpd = _Server(address, family, app, web_config or WebConfig(), client_timeout_seconds)
    try:
        httpd.server_bind()
        httpd.server_activate()
    except OSError as error:
        httpd.server_close()
        raise InputError(
            f"--web.listen-address {listen_address!r}: cannot listen ({error.strerror})"
        ) from None
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="scaleprobe-http"
    )
    thread.daemon = True
    thread.start()
    server = Server(httpd, thread)
    log.info(
        "serving HTTP",
        extra={"address": f"{server.host}:{server.port}", "tls": server.scheme == "https"},
    )
    return server
