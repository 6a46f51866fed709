"""The web config file (exporter-toolkit's format): parsing, every problem listed, bcrypt checks."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from certs import make_certificates
from hypothesis import given, settings
from hypothesis import strategies as st
from scaleprobe.exporter.webconfig import BasicAuth, load_web_config, parse_web_config
from scaleprobe.models.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
# cost 4 keeps the tests fast; production hashes use 10 or more
ALICE_HASH = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_full_config_with_relative_paths(tmp_path: Path) -> None:
    make_certificates(tmp_path / "tls")
    config = load_web_config(
        write(
            tmp_path / "web.yml",
            "tls_server_config:\n"
            "  cert_file: tls/server.crt\n"
            "  key_file: tls/server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n"
            "  client_ca_file: tls/ca.crt\n"
            "  min_version: TLS13\n"
            "http_server_config:\n"
            "  http2: false\n"
            "  headers:\n"
            "    Strict-Transport-Security: max-age=31536000\n"
            f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n",
        )
    )
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "tls" / "server.crt"
    context = config.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.basic_auth_users == {"alice": ALICE_HASH.encode()}
    assert config.headers == {"Strict-Transport-Security": "max-age=31536000"}


def test_an_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path / "web.yml", ""))
    assert config.tls is None
    assert config.ssl_context() is None
    assert config.basic_auth_users == {}


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "web.yml",
        "tls_server_config:\n"
        "  cert_file: missing.crt\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS9\n"
        "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "basic_auth_users:\n"
        "  bob: plaintext-password\n"
        "basic_auth_user: {}\n",
    )
    with pytest.raises(InputError) as raised:
        load_web_config(path)
    message = str(raised.value)
    assert "\n" not in message
    for expected in (
        "basic_auth_user: unknown key (allowed: tls_server_config, http_server_config, "
        "basic_auth_users)",
        "tls_server_config.cert_file: file not found",
        "tls_server_config.key_file: missing",
        "tls_server_config.client_ca_file: missing",
        "tls_server_config.min_version: 'TLS9' is not one of TLS10, TLS11, TLS12, TLS13",
        "tls_server_config.cipher_suites: not supported",
        "basic_auth_users.bob: not a bcrypt hash",
    ):
        assert expected in message
    assert "plaintext-password" not in message  # a wrong "hash" may be a password: never echo it


def test_an_empty_tls_section_means_plain_http(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path / "web.yml", "tls_server_config: {}\n"))
    assert config.tls is None


KEYS = st.sampled_from(
    ["tls_server_config", "basic_auth_users", "http_server_config", "cert_file", "key_file",
     "client_auth_type", "client_ca_file", "min_version", "max_version", "headers", "http2",
     "alice", "TLS12", "RequireAndVerifyClientCert", "x"]
)  # fmt: skip
DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | KEYS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_any_document_is_either_valid_or_an_input_error(document: object) -> None:
    """Whatever YAML gives us, the answer is a config or a plain InputError, never a crash."""
    try:
        parse_web_config(document, base_dir=Path("/nonexistent"))
    except InputError as error:
        assert "\n" not in str(error)


def test_unverified_client_certificates_are_refused_not_weakened(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    path = write(
        tmp_path / "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAnyClientCert\n",
    )
    with pytest.raises(InputError, match="RequireAnyClientCert accepts client certificates"):
        load_web_config(path)


def test_a_key_that_does_not_match_the_certificate(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    path = write(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {certificates.server_cert_file}\n"
        f"  key_file: {certificates.client_key_file}\n",
    )
    with pytest.raises(InputError, match="cannot load the certificate, key or CA"):
        load_web_config(path)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read it"):
        load_web_config(tmp_path / "absent.yml")
    with pytest.raises(InputError, match="not valid YAML"):
        load_web_config(write(tmp_path / "bad.yml", "tls_server_config: [\n"))
    with pytest.raises(InputError, match="expected a mapping"):
        load_web_config(write(tmp_path / "list.yml", "- a\n- b\n"))


def test_basic_auth_checks_and_caches_only_successes() -> None:
    calls: list[bytes] = []

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return bcrypt.checkpw(password, hashed)

    auth = BasicAuth({"alice": ALICE_HASH.encode()}, checkpw=counting_checkpw)
    assert auth.check(basic("alice", "wonderland")) == "alice"
    assert auth.check(basic("alice", "wonderland")) == "alice"  # served from the cache
    assert calls == [b"wonderland"]
    assert auth.check(basic("alice", "wrong")) is None
    assert auth.check(basic("alice", "wrong")) is None  # failures are checked every time
    assert calls == [b"wonderland", b"wrong", b"wrong"]
    # an unknown user still pays a bcrypt check (no timing oracle for user names), and fails
    assert auth.check(basic("mallory", "wonderland")) is None
    assert len(calls) == 4
    for malformed in (None, "", "Bearer abc", "Basic !!!not-base64", "Basic bm8tY29sb24="):
        assert auth.check(malformed) is None  # "bm8tY29sb24=" is "no-colon"
    assert len(calls) == 4


def test_a_cached_success_does_not_survive_a_changed_hash() -> None:
    """The cache key includes the hash, so a user whose password was rotated is checked again."""
    old = BasicAuth({"alice": ALICE_HASH.encode()})
    assert old.check(basic("alice", "wonderland")) == "alice"
    rotated = BasicAuth({"alice": bcrypt.hashpw(b"new", bcrypt.gensalt(4))})
    assert rotated.check(basic("alice", "wonderland")) is None
    assert rotated.check(basic("alice", "new")) == "alice"


def run_cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``scaleprobe run`` with a small config (fake worker, state in tmp_path) and ``flags``."""
    if not (ROOT / "exporter" / "daemon.py").exists():
        pytest.skip("exporter/daemon.py (scaleprobe run) has not landed yet")
    config = tmp_path / "scaleprobe.yml"
    config.write_text(
        "devices: [cpu]\n"
        "models:\n  - model: distilbert-base\n    serving: {batch_size: 1, seq_len: 32}\n"
        "grid: {batch_sizes: [1], seq_lens: [32]}\n"
        f"worker: {{command: [{sys.executable}, {ROOT / 'tests' / 'fake_worker.py'}]}}\n"
        f"state: {{file: {tmp_path / 'state.json'}}}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "scaleprobe.exporter.cli", "run", f"--config.file={config}", *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_scaleprobe_run_refuses_a_bad_web_config_with_exit_2(tmp_path: Path) -> None:
    web = write(tmp_path / "web.yml", "basic_auth_users:\n  bob: hunter2\ntls_server_config: 3\n")
    result = run_cli(tmp_path, f"--web.config.file={web}", "--web.listen-address=127.0.0.1:0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "basic_auth_users.bob: not a bcrypt hash" in errors[0]
    assert "tls_server_config: expected a mapping" in errors[0]
    assert "hunter2" not in result.stderr


def test_scaleprobe_run_refuses_a_bad_listen_address_with_exit_2(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--web.listen-address=localhost")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--web.listen-address 'localhost': expected HOST:PORT" in result.stderr
