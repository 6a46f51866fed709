"""The web config file: TLS and basic auth, in the format Prometheus' Go exporters share.

The same file that node_exporter and friends read (exporter-toolkit's format) works here::

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12               # TLS10 .. TLS13; max_version likewise
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      alice: $2y$10$...                # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

``load_web_config`` returns a checked ``WebConfig`` or raises ``InputError`` listing every problem
(unknown keys, missing files, unreadable certificates, malformed hashes). What Python's ``ssl``
cannot do is refused rather than silently weakened: ``RequestClientCert`` and
``RequireAnyClientCert`` (accepting unverified client certificates), Go cipher-suite names,
``client_allowed_sans``, inline ``cert``/``key``.

Passwords are checked with bcrypt, which costs about 100 ms by design; like exporter-toolkit, a
successful check is cached under a SHA-256 of user, hash and password, so a scraper that sends the
same credentials every 15 s pays it once. Failures are never cached, and an unknown user still pays
a bcrypt check, so timing does not reveal which users exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scaleprobe.models.errors import InputError

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_KEYS: tuple[str, ...] = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
)
UNSUPPORTED_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
)
HTTP_KEYS = ("http2", "headers")
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
BCRYPT_HASH = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
# A valid hash that matches no password, checked for unknown users so they cost the same time.
DUMMY_HASH = b"$2b$10$" + b"." * 53
CACHE_MAX_ENTRIES = 1024


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context for these settings (raises ``ssl.SSLError``/``OSError``)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        if self.max_version is not None:
            context.maximum_version = TLS_VERSIONS[self.max_version]
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
        return context


@dataclass(frozen=True)
class WebConfig:
    """Checked web settings: TLS (or None for plain HTTP), users and extra response headers."""

    tls: TLSConfig | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.ssl_context()


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, caching successes."""

    def __init__(
        self,
        users: dict[str, bytes],
        checkpw: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        """``checkpw(password, hash)`` defaults to ``bcrypt.checkpw`` (tests count calls)."""
        self._users = dict(users)
        self._checkpw = checkpw or _bcrypt_check
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> str | None:
        """The authenticated user name, or None for missing, malformed or wrong credentials."""
        credentials = _decode_basic(authorization)
        if credentials is None:
            return None
        user, password = credentials
        hashed = self._users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), hashed or b"", password.encode()])).digest()
        with self._lock:
            if hashed is not None and key in self._verified:
                return user
        try:
            ok = self._checkpw(password.encode(), hashed or DUMMY_HASH)
        except ValueError:
            ok = False
        if not ok or hashed is None:
            return None
        with self._lock:
            if len(self._verified) >= CACHE_MAX_ENTRIES:
                self._verified.clear()
            self._verified.add(key)
        return user


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # imported here so that a plain-HTTP daemon does not need it loaded

    return bool(bcrypt.checkpw(password, hashed))


def _decode_basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return user, password


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file; raise ``InputError`` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"--web.config.file {path}: cannot read it ({error.strerror})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        message = str(error).replace("\n", " ")
        raise InputError(f"--web.config.file {path}: not valid YAML ({message})") from None
    return parse_web_config(document, base_dir=path.parent, source=str(path))


def parse_web_config(document: Any, base_dir: Path, source: str = "web config") -> WebConfig:
    """Check a parsed web config document; paths in it are relative to ``base_dir``."""
    problems: list[str] = []
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InputError(f"--web.config.file {source}: expected a mapping with keys {TOP_KEYS}")
    _unknown_keys(document, TOP_KEYS, "", problems)
    tls = _parse_tls(document.get("tls_server_config"), base_dir, problems)
    headers = _parse_http(document.get("http_server_config"), problems)
    users = _parse_users(document.get("basic_auth_users"), problems)
    if problems:
        raise InputError(f"--web.config.file {source}: " + "; ".join(problems))
    return WebConfig(tls=tls, basic_auth_users=users, headers=headers)


def _unknown_keys(
    section: dict[Any, Any], allowed: tuple[str, ...], prefix: str, problems: list[str]
) -> None:
    for key in section:
        if key not in allowed:
            problems.append(f"{prefix}{key}: unknown key (allowed: {', '.join(allowed)})")


def _parse_tls(section: Any, base_dir: Path, problems: list[str]) -> TLSConfig | None:
    if section is None or section == {}:
        return None  # as in exporter-toolkit: an empty section means plain HTTP
    if not isinstance(section, dict):
        problems.append("tls_server_config: expected a mapping")
        return None
    for key in section:
        if key in UNSUPPORTED_TLS_KEYS:
            problems.append(f"tls_server_config.{key}: not supported by scaleprobe")
    known = {k: v for k, v in section.items() if k not in UNSUPPORTED_TLS_KEYS}
    _unknown_keys(known, TLS_KEYS, "tls_server_config.", problems)
    start = len(problems)
    cert_file = _file(section, "cert_file", base_dir, problems, required=True)
    key_file = _file(section, "key_file", base_dir, problems, required=True)
    client_auth_type = section.get("client_auth_type") or "NoClientCert"
    if not isinstance(client_auth_type, str):
        client_auth_type = repr(client_auth_type)  # reported below as not one of the choices
    if client_auth_type in UNSUPPORTED_CLIENT_AUTH_TYPES:
        problems.append(
            f"tls_server_config.client_auth_type: {client_auth_type} accepts client certificates "
            "without verifying them, which scaleprobe does not support "
            "(use VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        )
    elif client_auth_type not in CLIENT_AUTH_TYPES:
        problems.append(
            f"tls_server_config.client_auth_type: {client_auth_type!r} is not one of "
            f"{', '.join(CLIENT_AUTH_TYPES)}"
        )
    verifies = client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
    client_ca_file = _file(section, "client_ca_file", base_dir, problems, required=verifies)
    min_version = section.get("min_version") or "TLS12"
    max_version = section.get("max_version")
    for key, version in (("min_version", min_version), ("max_version", max_version)):
        if version is not None and (not isinstance(version, str) or version not in TLS_VERSIONS):
            problems.append(
                f"tls_server_config.{key}: {version!r} is not one of {', '.join(TLS_VERSIONS)}"
            )
    if len(problems) > start or cert_file is None or key_file is None:
        return None
    tls = TLSConfig(
        cert_file=cert_file,
        key_file=key_file,
        client_auth_type=client_auth_type,
        client_ca_file=client_ca_file,
        min_version=min_version,
        max_version=max_version,
    )
    try:
        tls.ssl_context()
    except (ssl.SSLError, OSError, ValueError) as error:
        problems.append(f"tls_server_config: cannot load the certificate, key or CA ({error})")
        return None
    return tls


def _file(
    section: dict[str, Any], key: str, base_dir: Path, problems: list[str], *, required: bool
) -> Path | None:
    value = section.get(key)
    if value is None or value == "":
        if required:
            problems.append(f"tls_server_config.{key}: missing (a file path is required)")
        return None
    if not isinstance(value, str):
        problems.append(f"tls_server_config.{key}: expected a file path, got {value!r}")
        return None
    path = base_dir / value
    if not path.is_file():
        problems.append(f"tls_server_config.{key}: file not found: {path}")
        return None
    return path


def _parse_http(section: Any, problems: list[str]) -> dict[str, str]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.append("http_server_config: expected a mapping")
        return {}
    _unknown_keys(section, HTTP_KEYS, "http_server_config.", problems)
    if "http2" in section and not isinstance(section["http2"], bool):
        problems.append("http_server_config.http2: expected true or false (scaleprobe serves 1.1)")
    headers = section.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\n" not in k + v for k, v in headers.items()
    ):
        problems.append("http_server_config.headers: expected a mapping of header name to string")
        return {}
    return dict(headers)


def _parse_users(section: Any, problems: list[str]) -> dict[str, bytes]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.append("basic_auth_users: expected a mapping of user name to bcrypt hash")
        return {}
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            problems.append(f"basic_auth_users: {user!r} is not a valid user name (no colons)")
        elif not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            problems.append(
                f"basic_auth_users.{user}: not a bcrypt hash (expected $2y$10$ followed by 53 "
                "characters, e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
            )
        else:
            users[user] = hashed.encode()
    return users
