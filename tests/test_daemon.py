"""The daemon: snapshots swapped per device, state written, backoff, and a real ``scaleprobe run``
process through its lifecycle (serve at once, SIGTERM, kill -9 and restart)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from scaleprobe.exporter.config import Config, default_config
from scaleprobe.exporter.daemon import Daemon, make_scheduler
from scaleprobe.exporter.snapshot import empty_device_state
from scaleprobe.exporter.state import load_snapshot, save_snapshot

FAKE_WORKER = str(Path(__file__).with_name("fake_worker.py"))


def fake(*args: str) -> tuple[str, ...]:
    return (sys.executable, FAKE_WORKER, *args)


class Clock:
    def __init__(self, now: float = 1795000000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return replace(
        default_config(devices=("cpu",)),
        worker_command=fake(),
        worker_timeout_seconds=30.0,
        backoff_initial_seconds=60.0,
        backoff_max_seconds=600.0,
        state_file=str(tmp_path / "state.json"),
    )


def test_a_run_swaps_in_a_snapshot_and_writes_the_state(config: Config, tmp_path: Path) -> None:
    daemon = Daemon(config, ("cpu",), state_path=tmp_path / "state.json")
    before = daemon.snapshot()
    assert [d.device for d in before.devices] == ["cpu"] and not before.devices[0].up
    daemon.run_cycles()
    after = daemon.snapshot()
    assert after is not before and after.devices[0].up
    assert after.build["torch_version"] == "0.0-fake"  # from the worker's environment
    assert load_snapshot(tmp_path / "state.json") == after
    assert before.devices[0].calibration is None  # the old value was not mutated


def test_an_unwritable_state_file_is_counted_and_serving_goes_on(
    config: Config, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    daemon = Daemon(config, ("cpu",), state_path=blocker / "state.json")
    daemon.run_cycles()
    snapshot = daemon.snapshot()
    assert snapshot.devices[0].up
    assert snapshot.state_write_errors_total == 1
    daemon.run_cycles()
    assert daemon.snapshot().state_write_errors_total == 2


def test_a_failing_device_backs_off_then_retries(config: Config, tmp_path: Path) -> None:
    clock = Clock()
    failing = replace(config, worker_command=fake("--mode", "fail"))
    daemon = Daemon(failing, ("cpu",), state_path=tmp_path / "s.json", clock=clock)
    daemon.run_cycles()
    runs = daemon.snapshot().devices[0].probe_runs_total
    assert runs[("cycle", "failed")] == 1
    clock.now += 30  # within the first backoff (60 s): skipped
    daemon.run_cycles()
    assert daemon.snapshot().devices[0].probe_runs_total[("cycle", "failed")] == 1
    clock.now += 31
    daemon.run_cycles()
    assert daemon.snapshot().devices[0].probe_runs_total[("cycle", "failed")] == 2
    clock.now += 61  # the second backoff is 120 s
    daemon.run_cycles()
    assert daemon.snapshot().devices[0].probe_runs_total[("cycle", "failed")] == 2


def test_devices_run_one_after_the_other_in_one_job(config: Config, tmp_path: Path) -> None:
    daemon = Daemon(config, ("cuda:0", "cuda:1"), state_path=tmp_path / "s.json")
    daemon.run_cycles()
    devices = daemon.snapshot().devices
    assert [d.device for d in devices] == ["cuda:0", "cuda:1"]
    assert all(d.up for d in devices)
    assert devices[0].last_cycle_timestamp_seconds <= devices[1].last_cycle_timestamp_seconds
    assert devices[0].models[0].dtype == "float16"
    scheduler = make_scheduler(daemon, config)
    (job,) = scheduler.get_jobs()
    assert job.max_instances == 1 and job.coalesce
    assert job.trigger.interval.total_seconds() == config.interval_seconds
    assert job.trigger.jitter == config.jitter_seconds


def test_the_loaded_state_is_served_and_trimmed_to_the_configured_devices(
    config: Config, tmp_path: Path
) -> None:
    first = Daemon(config, ("cpu",), state_path=tmp_path / "s.json")
    first.run_cycles()
    saved = first.snapshot().with_device(empty_device_state("cuda:7"), 5.0)
    save_snapshot(saved, tmp_path / "s.json")
    loaded = load_snapshot(tmp_path / "s.json")
    again = Daemon(config, ("cpu",), state_path=tmp_path / "s.json", initial=loaded)
    assert [d.device for d in again.snapshot().devices] == ["cpu"]
    assert again.snapshot().devices[0] == first.snapshot().devices[0]
    fewer = replace(config, models=config.models[:1])
    trimmed = Daemon(fewer, ("cpu",), state_path=tmp_path / "s.json", initial=loaded)
    assert [m.model for m in trimmed.snapshot().devices[0].models] == [config.models[0].name]


def test_baseline_reset_applies_to_the_first_good_cycle_only(
    config: Config, tmp_path: Path
) -> None:
    first = Daemon(config, ("cpu",), state_path=tmp_path / "s.json")
    first.run_cycles()
    old_baseline = first.snapshot().devices[0].baseline
    slow = replace(config, worker_command=fake("--slowdown", "2"))
    daemon = Daemon(
        slow,
        ("cpu",),
        state_path=tmp_path / "s.json",
        initial=first.snapshot(),
        reset_baseline=True,
    )
    daemon.run_cycles()
    new_baseline = daemon.snapshot().devices[0].baseline
    assert new_baseline != old_baseline
    daemon.run_cycles()
    assert daemon.snapshot().devices[0].baseline == new_baseline


# --- a real `scaleprobe run` process ---------------------------------------------------------


class Running:
    """A `scaleprobe run` subprocess, its log file and the port it bound."""

    def __init__(
        self,
        tmp_path: Path,
        config_text: str | None,
        *extra: str,
        name: str = "run",
        listen: str | None = "127.0.0.1:0",
    ) -> None:
        """``config_text`` None runs without ``--config.file``, ``listen`` None without
        ``--web.listen-address`` (the defaults: the built-in config, :9478)."""
        flags = list(extra)
        if config_text is not None:
            self.config_path = tmp_path / f"{name}.yml"
            self.config_path.write_text(config_text)
            flags += ["--config.file", str(self.config_path)]
        if listen is not None:
            flags += ["--web.listen-address", listen]
        self.log_path = tmp_path / f"{name}.log"
        env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1")
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scaleprobe.exporter.cli", "run", *flags],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.process.kill()  # never leave a daemon behind on a failed start
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r'serving HTTP.*?address"?[=:]"?[^\s"]*:(\d+)', self.log())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start serving:\n{self.log()}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as reply:
            return reply.read().decode()

    def wait_for_metric(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.get("/metrics")
            if re.search(pattern, text, re.MULTILINE):
                return text
            time.sleep(0.1)
        raise AssertionError(f"{pattern} never appeared:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def config_text(tmp_path: Path, *worker_args: str, interval: int = 3600) -> str:
    command = json.dumps([sys.executable, FAKE_WORKER, *worker_args])
    return (
        f"worker: {{command: {command}, timeout_seconds: 120}}\n"
        f"schedule: {{interval_seconds: {interval}, jitter_seconds: 0}}\n"
        f"state: {{file: {tmp_path / 'state.json'}}}\n"
    )


CAPACITY = (
    r"^scaleprobe_predicted_capacity_sequences_per_second"
    r'\{device="cpu",dtype="float32",model="bert-base"\} '
)


def test_sigterm_stops_the_daemon_with_state_written(tmp_path: Path) -> None:
    daemon = Running(tmp_path, config_text(tmp_path))
    try:
        text = daemon.wait_for_metric(r'^scaleprobe_up\{device="cpu"\} 1\.0$')
        for model in ("distilbert-base", "bert-base", "bigbird-roberta-base"):
            assert f'model="{model}"' in text
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log()
    assert "Traceback" not in daemon.log()
    assert "msg=stopped state_saved=true" in daemon.log()
    state = load_snapshot(tmp_path / "state.json")
    assert state is not None and state.devices[0].up


def test_sigterm_during_a_cycle_ends_the_worker_and_exits_0(tmp_path: Path) -> None:
    pidfile = tmp_path / "worker.pid"
    daemon = Running(tmp_path, config_text(tmp_path, "--mode", "hang", "--pidfile", str(pidfile)))
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker_pid = int(pidfile.read_text())
        assert daemon.get("/healthz")  # serving while the cycle runs
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log()
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    assert "cycle failed" not in daemon.log()  # stopping is not a device failure


def test_the_first_scrape_after_kill_9_has_the_calibration(tmp_path: Path) -> None:
    first = Running(tmp_path, config_text(tmp_path), name="first")
    try:
        before = first.wait_for_metric(CAPACITY)
    finally:
        first.process.kill()  # kill -9: no chance to write anything on the way out
        first.process.wait(timeout=10)
    stamp = re.search(
        r'^scaleprobe_last_calibration_timestamp_seconds\{device="cpu"\} (\S+)$', before, re.M
    )
    assert stamp is not None
    # the restarted daemon's worker hangs: whatever it serves comes from the state file
    second = Running(tmp_path, config_text(tmp_path, "--mode", "hang"), name="second")
    try:
        after = second.get("/metrics")
        assert re.search(CAPACITY, after, re.MULTILINE), after
        assert (
            f'scaleprobe_last_calibration_timestamp_seconds{{device="cpu"}} {stamp.group(1)}'
            in after
        )
        ready = second.get("/readyz")
        assert ready
    finally:
        assert second.stop() == 0, second.log()


def test_a_corrupt_state_file_is_moved_aside_and_the_daemon_starts(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"schema_version": 1, "created_at')
    daemon = Running(tmp_path, config_text(tmp_path))
    try:
        daemon.wait_for_metric(r'^scaleprobe_up\{device="cpu"\} 1\.0$')
    finally:
        assert daemon.stop() == 0
    asides = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_text().startswith('{"schema_version": 1')
    assert "state file unusable; moved aside" in daemon.log()


def test_metrics_answer_before_the_first_cycle_ends(tmp_path: Path) -> None:
    daemon = Running(tmp_path, config_text(tmp_path, "--mode", "hang"))
    try:
        text = daemon.get("/metrics")
        assert 'scaleprobe_up{device="cpu"} 0.0' in text
        assert "scaleprobe_build_info" in text
        with pytest.raises(urllib.error.HTTPError) as caught:
            daemon.get("/readyz")
        assert caught.value.code == 503
    finally:
        assert daemon.stop() == 0


def test_a_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("schedule: {interval_seconds: 0}\nmodels: [gpt-17]\n")
    result = subprocess.run(
        [sys.executable, "-m", "scaleprobe.exporter.cli", "run", "--config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "schedule.interval_seconds: 0 is out of range" in result.stderr
    assert "models[0].model: unknown model 'gpt-17'" in result.stderr


def test_json_logs(tmp_path: Path) -> None:
    daemon = Running(tmp_path, config_text(tmp_path), "--log.format", "json")
    try:
        daemon.wait_for_metric(r'^scaleprobe_up\{device="cpu"\} 1\.0$')
    finally:
        assert daemon.stop() == 0
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
    done = [line for line in lines if line["msg"] == "cycle done"]
    assert done and done[0]["device"] == "cpu" and done[0]["probe"] == "cycle"
    assert all({"ts", "level", "msg"} <= set(line) for line in lines)


def test_logfmt_lines_quote_what_needs_quoting() -> None:
    import io
    import logging

    from scaleprobe.exporter.logs import setup_logging

    stream = io.StringIO()
    handler = setup_logging("debug", "logfmt", stream)
    try:
        logging.getLogger("scaleprobe.test").warning(
            "cycle failed",
            extra={"device": "cuda:0", "probe": "cycle", "reason": 'a "quoted"\nline', "n": 1.5},
        )
        logging.getLogger("scaleprobe.test").debug("quiet", extra={"device": "cpu"})
    finally:
        logging.getLogger("scaleprobe").removeHandler(handler)
        logging.getLogger("scaleprobe").propagate = True  # caplog in later tests needs it
        logging.getLogger("apscheduler").propagate = True
    first, second = stream.getvalue().splitlines()
    assert re.match(r"^ts=\S+Z level=warn logger=scaleprobe.test ", first)
    assert (
        'msg="cycle failed" device=cuda:0 probe=cycle reason="a \\"quoted\\"\\nline" n=1.5' in first
    )
    assert "level=debug" in second and "msg=quiet device=cpu" in second


PAPER_MODELS = ("distilbert-base", "bert-base", "bigbird-roberta-base")
# What a user reads for every model after the first cycle (DESIGN.md's metric contract) ...
PREDICTED_METRICS = (
    "scaleprobe_predicted_throughput_sequences_per_second",
    "scaleprobe_predicted_latency_seconds",
    "scaleprobe_predicted_framework_overhead_ratio",
    "scaleprobe_predicted_capacity_sequences_per_second",
    "scaleprobe_predicted_capacity_tokens_per_second",
    "scaleprobe_predicted_max_batch_size",
    "scaleprobe_serving_point_info",
)
# ... and for every model the cycle measured (the guard may skip a point while the CPU is busy)
MEASURED_METRICS = (
    "scaleprobe_measured_throughput_sequences_per_second",
    "scaleprobe_measured_framework_overhead_ratio",
    "scaleprobe_prediction_error_ratio",
    "scaleprobe_baseline_error_ratio",
    "scaleprobe_prediction_mape_ratio",
)


def has_series(text: str, metric: str, model: str) -> bool:
    return re.search(rf'^{metric}\{{[^}}]*model="{model}"', text, re.MULTILINE) is not None


@pytest.mark.integration
def test_a_bare_scaleprobe_run_serves_at_once_and_every_paper_model_after_one_cycle(
    tmp_path: Path,
) -> None:
    """``scaleprobe run`` with no arguments, as the README's quick start runs it: the built-in
    config for this machine (the CPU, the three paper models), ``:9478``, the XDG state file and
    the real probe worker. Every model is predicted after the first cycle; every model is measured
    too unless the guard skipped its point (the log then says so)."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(("", 9478))
        except OSError:
            if os.environ.get("CI"):
                pytest.fail("port 9478 is taken: the default listen address cannot be tested")
            pytest.skip("port 9478 is taken here")
    daemon = Running(tmp_path, None, listen=None)
    try:
        assert daemon.port == 9478
        first = daemon.get("/metrics")  # at once, before any cycle
        assert 'scaleprobe_up{device="cpu"} 0.0' in first, first
        deadline = time.monotonic() + 300
        while 'scaleprobe_up{device="cpu"} 1.0' not in (text := daemon.get("/metrics")):
            if "calibration probes did not run: compute: CPU busy" in (log := daemon.log()):
                # the guard did its job: other processes keep this machine's CPU busy
                pytest.skip("the guard skipped the first cycle: this machine's CPU is busy")
            assert time.monotonic() < deadline, f"no calibration after 300 s:\n{log}"
            time.sleep(0.2)
        log = daemon.log()
        missing = [
            f"{metric} for {model}"
            for model in PAPER_MODELS
            for metric in PREDICTED_METRICS
            if not has_series(text, metric, model)
        ]
        measured = [m for m in PAPER_MODELS if f"skipping model {m} " not in log]
        missing += [
            f"{metric} for {model}"
            for model in measured
            for metric in MEASURED_METRICS
            if not has_series(text, metric, model)
        ]
        assert measured, f"the guard skipped every model's points:\n{log}"
        assert not missing, f"missing after the first cycle: {missing}\n{log}"
        assert (tmp_path / "xdg" / "scaleprobe" / "state.json").is_file()
    finally:
        assert daemon.stop(timeout=120) == 0, daemon.log()
    assert "Traceback" not in daemon.log()
