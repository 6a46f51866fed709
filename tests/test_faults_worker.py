"""Probe faults against a real ``scaleprobe run`` daemon: the worker killed, hanging, failing,
printing truncated or malformed JSON, and a real worker whose memory cap is too small.

Each fault is switched on and off through a flag file that a small fault worker (written into the
test's directory, around ``tests/fake_worker.py``) reads at every cycle. For each fault the daemon
must keep serving the last good calibration, count the outcome in
``scaleprobe_probe_runs_total{probe="cycle"}``, log its backoff, and come back (``scaleprobe_up``
1, no consecutive failures) once the flag file is removed.

``DaemonProcess`` and ``daemon_config`` are shared with the other fault, load and access tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

TESTS_DIR = Path(__file__).resolve().parent
FAKE_WORKER = str(TESTS_DIR / "fake_worker.py")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def daemon_config(tmp_path: Path, command: list[str] | None, **sections: Any) -> dict[str, Any]:
    """A small, fast config: one model, a 2x2 grid, cycles every second, short backoff."""
    config: dict[str, Any] = {
        "devices": ["cpu"],
        "models": ["bert-base"],
        "grid": {"batch_sizes": [1, 4], "seq_lens": [32, 128]},
        "schedule": {
            "interval_seconds": 1,
            "jitter_seconds": 0,
            "cycle_budget_seconds": 1,
            "points_per_cycle": 2,
        },
        "worker": {
            "timeout_seconds": 3,
            "backoff_initial_seconds": 1,
            "backoff_max_seconds": 2,
        },
        "state": {"file": str(tmp_path / "state" / "state.json")},
    }
    if command is not None:
        config["worker"]["command"] = command
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class DaemonProcess:
    """A real ``python -m scaleprobe.exporter.cli run`` subprocess, its log and its port."""

    def __init__(
        self,
        tmp_path: Path,
        config: Mapping[str, Any],
        *extra: str,
        name: str = "daemon",
        listen: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = tmp_path / f"{name}.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config)))
        self.log_path = tmp_path / f"{name}.log"
        self.host = "127.0.0.1"
        child_env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1")
        child_env.update(env or {})
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scaleprobe.exporter.cli",
                    "run",
                    "--config.file",
                    str(self.config_path),
                    "--web.listen-address",
                    listen,
                    *extra,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env,
            )
        self.port = self._wait_for_port()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r'msg="serving HTTP" address=\S*:(\d+)', self.log())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start serving:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse_metrics(body)

    def wait_for(
        self, condition: Callable[[Samples], bool], what: str, timeout: float = 30
    ) -> Samples:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, (
                f"daemon died while waiting for {what}:\n{self.log()}"
            )
            samples = self.metrics()
            if condition(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """VmRSS (or VmHWM, the peak) of the daemon process, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
        assert match, status
        return int(match.group(1)) * 1024

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


def runs(samples: Samples, outcome: str, probe: str = "cycle") -> float:
    return (
        sample(samples, "scaleprobe_probe_runs_total", device="cpu", probe=probe, outcome=outcome)
        or 0.0
    )


def up(samples: Samples) -> float | None:
    return sample(samples, "scaleprobe_up", device="cpu")


def capacity(samples: Samples) -> float | None:
    return sample(
        samples,
        "scaleprobe_predicted_capacity_sequences_per_second",
        device="cpu",
        model="bert-base",
        dtype="float32",
    )


# --- the fault worker ------------------------------------------------------------------------

FAULT_WORKER = """\
import json, os, signal, sys, time
sys.path.insert(0, {tests_dir!r})
import fake_worker

flag, pidfile = sys.argv[1], sys.argv[2]
request = json.loads(sys.stdin.read())
mode = open(flag).read().strip() if os.path.exists(flag) else "ok"
time.sleep(0.1)  # a worker takes a while (building models, probing)
document = json.dumps(fake_worker.result_document(request, 1.0, False))
if mode in ("wait-for-kill", "hang"):
    with open(pidfile.replace(".pid", ".pids"), "a") as handle:
        handle.write(f"{{os.getpid()}}\\n")
if mode == "wait-for-kill":  # the test kills this process with SIGKILL
    with open(pidfile + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    print(json.dumps({{"event": "progress", "done": 1, "total": 2, "probe": "model"}}),
          file=sys.stderr, flush=True)
    time.sleep(3600)
elif mode == "hang":
    time.sleep(3600)
elif mode == "exit":
    print("fake worker: RuntimeError: CUDA error: an illegal memory access", file=sys.stderr)
    sys.exit(3)
elif mode == "truncated":
    print(document[: len(document) // 2])
elif mode == "stderr-flood":  # 64 MiB of log on one line, then a good result
    chunk = "x" * 65536
    for _ in range(1024):
        sys.stderr.write(chunk)
    sys.stderr.write("\\n")
    sys.stderr.flush()
    print(document)
elif mode == "malformed":
    print(json.dumps({{"schema": "scaleprobe.worker/1", "device": "cpu", "probes": "none"}}))
else:
    print(document)
"""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, Path]]:
    """One daemon for all worker faults; each test leaves it recovered."""
    tmp_path = tmp_path_factory.mktemp("worker-faults")
    script = tmp_path / "fault_worker.py"
    script.write_text(FAULT_WORKER.format(tests_dir=str(TESTS_DIR)))
    flag = tmp_path / "fault"
    command = [sys.executable, str(script), str(flag), str(tmp_path / "worker.pid")]
    daemon = DaemonProcess(tmp_path, daemon_config(tmp_path, command))
    try:
        daemon.wait_for(lambda s: up(s) == 1.0, "the first good cycle")
        yield daemon, flag
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log()
        assert "Traceback" not in daemon.log()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mode", "outcome", "logged"),
    [
        ("wait-for-kill", "failed", "worker killed by SIGKILL"),
        ("hang", "timeout", "worker killed after the 3 s timeout"),
        (
            "exit",
            "failed",
            "worker exited with code 3; last stderr line: fake worker: RuntimeError",
        ),
        ("truncated", "failed", "worker malformed: worker stdout is not one JSON document"),
        ("malformed", "failed", "worker malformed: worker result document"),
    ],
)
def test_a_worker_fault_keeps_the_last_snapshot_backs_off_and_recovers(
    faulty: tuple[DaemonProcess, Path], mode: str, outcome: str, logged: str
) -> None:
    daemon, flag = faulty
    before = daemon.wait_for(lambda s: up(s) == 1.0, "a good cycle")
    good_capacity = capacity(before)
    good_calibration = sample(before, "scaleprobe_last_calibration_timestamp_seconds", device="cpu")
    assert good_capacity and good_calibration
    failures_before = runs(before, outcome)
    ok_before = runs(before, "ok")
    log_before = len(daemon.log())
    pidfile = flag.parent / "worker.pid"
    pidfile.unlink(missing_ok=True)
    flag.write_text(mode)
    try:
        if mode == "wait-for-kill":
            deadline = time.monotonic() + 20
            while not pidfile.exists():
                assert time.monotonic() < deadline, daemon.log()
                time.sleep(0.02)
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        during = daemon.wait_for(lambda s: runs(s, outcome) > failures_before, f"a {mode} fault")
        # the last good calibration is still served, unchanged, and the daemon says it is not up
        assert up(during) == 0.0
        assert capacity(during) == good_capacity
        assert (
            sample(during, "scaleprobe_last_calibration_timestamp_seconds", device="cpu")
            == good_calibration
        )
        assert (sample(during, "scaleprobe_cycle_consecutive_failures", device="cpu") or 0) >= 1
        assert daemon.get("/readyz")[0] == 200  # a calibration is still available
        status, body = daemon.get("/api/v1/capacity")
        assert status == 200 and json.loads(body)["devices"][0]["models"], body
        new_log = daemon.log()[log_before:]
        assert logged in new_log, new_log
        assert 'msg="backing off before the next try"' in new_log
        if mode == "exit":  # a second failure in a row doubles the wait, up to the cap (2 s)
            daemon.wait_for(
                lambda s: (
                    (sample(s, "scaleprobe_cycle_consecutive_failures", device="cpu") or 0) >= 2
                ),
                "a second failure",
            )
            new_log = daemon.log()[log_before:]
            assert re.search(r"backoff_seconds=1(\.0)?\b", new_log), new_log
            assert re.search(r"backoff_seconds=2(\.0)?\b", new_log), new_log
    finally:
        flag.unlink(missing_ok=True)
    after = daemon.wait_for(
        lambda s: up(s) == 1.0 and runs(s, "ok") > ok_before, f"recovery from {mode}", timeout=40
    )
    assert sample(after, "scaleprobe_cycle_consecutive_failures", device="cpu") == 0
    assert (sample(after, "scaleprobe_last_calibration_timestamp_seconds", device="cpu") or 0) > (
        good_calibration
    )
    # no hung or killed worker is left behind (the supervisor ends the worker's process group)
    pids_file = flag.parent / "worker.pids"
    for pid in pids_file.read_text().split() if pids_file.exists() else []:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


@pytest.mark.integration
def test_a_worker_flooding_stderr_on_one_line_does_not_bloat_the_daemon(
    faulty: tuple[DaemonProcess, Path],
) -> None:
    """A worker that prints 64 MiB without a newline (a tensor's repr, a runaway progress bar):
    the daemon keeps a bounded piece of the line, its peak memory and its log stay small, and
    the cycle's result is used."""
    daemon, flag = faulty
    before = daemon.wait_for(lambda s: up(s) == 1.0, "a good cycle")
    peak_before = daemon.rss_bytes("VmHWM")
    log_before = daemon.log_path.stat().st_size
    ok_before = runs(before, "ok")
    flag.write_text("stderr-flood")
    try:
        daemon.wait_for(lambda s: runs(s, "ok") > ok_before + 1, "cycles with a flooded stderr")
    finally:
        flag.unlink(missing_ok=True)
    peak_growth = daemon.rss_bytes("VmHWM") - peak_before
    log_growth = daemon.log_path.stat().st_size - log_before
    assert peak_growth < 32 * 2**20, f"peak RSS grew {peak_growth / 2**20:.0f} MiB"
    assert log_growth < 2**20, f"the log grew {log_growth / 2**20:.0f} MiB"
    assert "[line truncated]" in daemon.log()


# --- a real worker: an out-of-memory point, simulated by the memory cap ----------------------

TINY_BERT = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


@pytest.mark.integration
def test_a_point_over_the_memory_cap_is_counted_and_the_daemon_goes_on(tmp_path: Path) -> None:
    """The real worker (torch) with a 1 MiB cap: the tiny model's 8 MB of weights cannot fit, so
    its point is refused as ``skipped_memory`` before anything is allocated; the calibration
    probes size themselves under the cap and the daemon still calibrates and serves."""
    model_dir = tmp_path / "tiny-bert"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_BERT))
    config = daemon_config(
        tmp_path,
        None,  # the real worker: python -m scaleprobe.probes.worker
        models=[
            {
                "model": str(model_dir),
                "name": "tiny-bert",
                "serving": {"batch_size": 1, "seq_len": 32},
            }
        ],
        grid={"batch_sizes": [1], "seq_lens": [32]},
        schedule={"interval_seconds": 3600, "cycle_budget_seconds": 10, "points_per_cycle": 1},
        worker={"timeout_seconds": 120},
        guard={"memory_cap_bytes": "1MiB"},
    )
    daemon = DaemonProcess(tmp_path, config)
    try:
        samples = daemon.wait_for(
            lambda s: runs(s, "skipped_memory", probe="model") >= 1,
            "the point refused by the memory cap",
            timeout=150,
        )
        assert runs(samples, "ok") == 1  # the cycle itself went fine
        assert runs(samples, "ok", probe="model") == 0
        assert up(samples) == 1.0  # the probes calibrated under the cap
        measured = [key for key in samples if key[0] == "scaleprobe_measured_latency_seconds"]
        assert measured == []  # nothing was measured at the refused point
        predicted = sample(
            samples,
            "scaleprobe_predicted_latency_seconds",
            device="cpu",
            model="tiny-bert",
            dtype="float32",
            batch_size="1",
            seq_len="32",
        )
        assert predicted is not None and predicted > 0
        assert daemon.get("/healthz")[0] == 200
    finally:
        assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "exceed memory_cap_bytes" in log or "skipped_memory" in log, log
    assert "Traceback" not in log
