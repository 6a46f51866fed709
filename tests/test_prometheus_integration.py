"""A real Prometheus scrapes scaleprobe over loopback; the contract is checked through its API.

Three set-ups: the HTTP server serving a fixed snapshot (every contract metric, exact values and
the dcgm-style join), the same over TLS with basic auth (and a scrape with a wrong password that
must fail), and a real ``scaleprobe run`` daemon whose probe worker is tests/fake_worker.py (the
exporter side is real: config, scheduler, fit, snapshot, collector, HTTP).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml
from certs import make_certificates
from prometheus import PrometheusServer, free_port, promtool_check_metrics
from sample_snapshot import sample_snapshot
from scaleprobe.exporter.http import Server, serve
from scaleprobe.exporter.webconfig import load_web_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

# The metric table of DESIGN.md: names are a contract for dashboards and rules.
CONTRACT_METRICS = (
    "scaleprobe_build_info",
    "scaleprobe_device_info",
    "scaleprobe_up",
    "scaleprobe_probe_compute_flops_per_second",
    "scaleprobe_probe_memory_bandwidth_bytes_per_second",
    "scaleprobe_probe_dispatch_seconds",
    "scaleprobe_measured_throughput_sequences_per_second",
    "scaleprobe_predicted_throughput_sequences_per_second",
    "scaleprobe_measured_latency_seconds",
    "scaleprobe_predicted_latency_seconds",
    "scaleprobe_measured_framework_overhead_ratio",
    "scaleprobe_predicted_framework_overhead_ratio",
    "scaleprobe_prediction_error_ratio",
    "scaleprobe_prediction_mape_ratio",
    "scaleprobe_predicted_capacity_sequences_per_second",
    "scaleprobe_predicted_capacity_tokens_per_second",
    "scaleprobe_predicted_max_batch_size",
    "scaleprobe_measured_model_flops_utilization_ratio",
    "scaleprobe_probe_runs_total",
    "scaleprobe_probe_duration_seconds",
    "scaleprobe_probe_device_seconds_total",
    "scaleprobe_last_calibration_timestamp_seconds",
)
PASSWORD = "scrape-me"


def metric_names(prom: PrometheusServer) -> set[str]:
    result = prom.query('count by (__name__) ({__name__=~"scaleprobe_.+"})')
    return {sample["metric"]["__name__"] for sample in result}


def scalar(prom: PrometheusServer, expr: str) -> float:
    result = prom.query(expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


@pytest.fixture
def fixed_server() -> Iterator[Server]:
    snapshot = sample_snapshot()
    server = serve(lambda: snapshot, "127.0.0.1:0")
    yield server
    server.shutdown()


def test_prometheus_scrapes_the_contract_metrics(fixed_server: Server, tmp_path: Path) -> None:
    with PrometheusServer([f"127.0.0.1:{fixed_server.port}"], tmp_path) as prom:
        prom.wait_for_targets_up()
        prom.wait_for('scaleprobe_up{device="cpu"}')
        missing = set(CONTRACT_METRICS) - metric_names(prom)
        assert not missing, f"not scraped: {sorted(missing)}"
        point = 'device="cpu",model="bert-base",dtype="float32",batch_size="1",seq_len="128"'
        assert scalar(prom, f"scaleprobe_measured_throughput_sequences_per_second{{{point}}}") == 4
        assert scalar(prom, f"scaleprobe_prediction_error_ratio{{{point}}}") == -0.2
        assert scalar(prom, 'scaleprobe_up{device="cuda:0"}') == 0
        # identity joins on device, as dashboards do, bringing dcgm-exporter's labels along
        joined = prom.query(
            "scaleprobe_predicted_capacity_sequences_per_second"
            " * on(job, instance, device) group_left(modelName, UUID)"
            " scaleprobe_device_info"
        )
        assert {s["metric"]["model"]: s["metric"]["modelName"] for s in joined} == {
            "bert-base": "Test CPU",
            "distilbert-base": "Test CPU",
        }
        # counters are counters: rate() over them works and is zero for a fixed snapshot
        prom.wait_for(
            'rate(scaleprobe_probe_runs_total{device="cpu",probe="model",outcome="ok"}[5s])'
        )
        assert scalar(prom, "scaleprobe_collector_success") == 1
        # the scrape itself: no samples dropped or rejected by Prometheus' parser
        assert scalar(prom, 'scrape_samples_post_metric_relabeling{job="scaleprobe"}') == (
            scalar(prom, 'scrape_samples_scraped{job="scaleprobe"}')
        )


def test_prometheus_scrapes_over_mutual_tls_with_basic_auth(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "tls")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    web_yml = tmp_path / "web.yml"
    web_yml.write_text(
        "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: tls/ca.crt\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    snapshot = sample_snapshot()
    server = serve(lambda: snapshot, "127.0.0.1:0", load_web_config(web_yml))
    target = f"localhost:{server.port}"
    tls = {
        "ca_file": certificates.ca_file,
        "cert_file": certificates.client_cert_file,
        "key_file": certificates.client_key_file,
    }
    try:
        with (
            PrometheusServer(
                [target],
                tmp_path / "good",
                scheme="https",
                tls_config=tls,
                basic_auth={"username": "prometheus", "password": PASSWORD},
            ) as good,
            PrometheusServer(
                [target],
                tmp_path / "bad",
                scheme="https",
                tls_config=tls,
                basic_auth={"username": "prometheus", "password": "wrong"},
            ) as bad,
        ):
            good.wait_for_targets_up()
            assert scalar(good, 'scaleprobe_up{device="cpu"}') == 1
            bad.wait_for('up{job="scaleprobe"} == 0')
            assert bad.query('{__name__=~"scaleprobe_.+"}') == []
            assert "401" in bad.target_health()[0][2]
    finally:
        server.shutdown()


# --- a real daemon ------------------------------------------------------------------------------


def daemon_config(tmp_path: Path) -> Path:
    config = {
        "devices": ["cpu"],
        "models": [
            {"model": "distilbert-base", "serving": {"batch_size": 4, "seq_len": 128}},
            {"model": "bert-base", "serving": {"batch_size": 4, "seq_len": 128}},
        ],
        "grid": {"batch_sizes": [1, 4], "seq_lens": [32, 128]},
        "schedule": {
            "interval_seconds": 2,
            "jitter_seconds": 0,
            "cycle_budget_seconds": 30,
            "points_per_cycle": 8,
        },
        "worker": {
            "timeout_seconds": 60,
            "command": [sys.executable, str(ROOT / "tests" / "fake_worker.py")],
            "backoff_initial_seconds": 1,
            "backoff_max_seconds": 2,
        },
        "state": {"file": str(tmp_path / "state.json")},
    }
    path = tmp_path / "scaleprobe.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def wait_http(url: str, timeout_seconds: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited with {process.returncode}: {process.stderr}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout_seconds} s")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    if not (ROOT / "exporter" / "daemon.py").exists():
        pytest.skip("exporter/daemon.py (scaleprobe run) has not landed yet")
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scaleprobe.exporter.cli",
                "run",
                f"--config.file={daemon_config(tmp_path)}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, process)
        yield f"127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        print(log_path.read_text()[-4000:])


def test_prometheus_scrapes_a_real_daemon(
    daemon: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    target, process = daemon
    with PrometheusServer([target], tmp_path / "prometheus") as prom:
        prom.wait_for_targets_up()
        # after the first cycle (fake worker: about a second), every contract metric is there
        prom.wait_for(
            'scaleprobe_measured_throughput_sequences_per_second{device="cpu"}',
            timeout_seconds=90,
        )
        prom.wait_for(
            "scaleprobe_prediction_mape_ratio",
            lambda result: len(result) == 2,
            timeout_seconds=90,
        )
        missing = set(CONTRACT_METRICS) - metric_names(prom)
        assert not missing, f"not scraped from the daemon: {sorted(missing)}"
        assert scalar(prom, 'scaleprobe_up{device="cpu"}') == 1
        capacity = prom.query("scaleprobe_predicted_capacity_sequences_per_second")
        assert {s["metric"]["model"] for s in capacity} == {"distilbert-base", "bert-base"}
        assert all(float(s["value"][1]) > 0 for s in capacity)
        # the fake worker reports the same device every cycle: its calibration is what it sent
        assert scalar(prom, 'scaleprobe_probe_compute_flops_per_second{device="cpu"}') > 0
        # cycles keep coming: the counter of ok model probes grows
        prom.wait_for(
            'increase(scaleprobe_probe_runs_total{device="cpu",outcome="ok"}[10s]) > 0',
            timeout_seconds=60,
        )
        assert scalar(prom, "scaleprobe_collector_success") == 1
        # promtool accepts what the daemon really serves
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=30) as response:
            exposition = response.read().decode()
        assert promtool_check_metrics(exposition) == []
    assert process.poll() is None
