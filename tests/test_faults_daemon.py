"""Daemon faults: ``kill -9`` during state writes, unusable state files, a read-only or full state
directory, and NVML missing or failing.

The state-directory faults use a small tmpfs mounted under the test's directory (this runs as root
in a container that allows ``mount``): "full" is the tmpfs filled by a filler file, "read-only" is
the same tmpfs remounted ``ro`` (which stops root too, unlike ``chmod``). Where ``mount`` is not
permitted those tests skip with the reason; the in-process test of an unwritable path (a state
path under a regular file, ``tests/test_daemon.py``) still covers the daemon's side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fake_worker
import pytest
from fakes import FakeNVML
from sample_snapshot import sample_snapshot
from scaleprobe.exporter.config import default_config
from scaleprobe.exporter.daemon import Daemon
from scaleprobe.exporter.http import default_registry
from scaleprobe.exporter.snapshot import Snapshot
from scaleprobe.exporter.state import load_snapshot, save_snapshot
from scaleprobe.exporter.supervisor import WorkerOutcome
from scaleprobe.probes.guard import Guard
from test_faults_worker import (
    FAKE_WORKER,
    DaemonProcess,
    capacity,
    daemon_config,
    parse_metrics,
    sample,
    up,
)


class Records(logging.Handler):
    """Collects the records of one logger, whether or not it propagates to the root (the
    daemon's ``setup_logging``, run in process by other tests, turns propagation off)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {vars(r)}" for r in self.records)


@contextlib.contextmanager
def records(name: str = "scaleprobe") -> Iterator[Records]:
    logger = logging.getLogger(name)
    handler = Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- kill -9 during state writes ---------------------------------------------------------------


def large_snapshot(models: int = 12, points_per_model: int = 2000) -> Snapshot:
    """The sample snapshot blown up to a few MB, so one write takes a noticeable time."""
    base = sample_snapshot()
    cpu = base.devices[0]
    model = cpu.models[0]
    point = model.points[0]
    many = tuple(replace(point, batch_size=i + 1) for i in range(points_per_model))
    bigger = tuple(replace(model, model=f"model-{i}", points=many) for i in range(models))
    return replace(base, devices=(replace(cpu, models=bigger),))


def _temporaries(directory: Path) -> list[Path]:
    return sorted(directory.glob(".state.json.*.tmp"))


@pytest.mark.integration
def test_kill_9_during_writes_never_leaves_a_half_written_state_file(tmp_path: Path) -> None:
    """A forked process rewrites a ~1.5 MB state file in a loop with the daemon's
    ``save_snapshot``, and is killed with SIGKILL: mostly the moment its temporary file appears
    (mid-write, the window that matters), sometimes at a random moment. After every kill the
    state file parses into a whole snapshot. Kills that left a temporary file behind are counted:
    the test fails if too few landed mid-write to mean anything. Loading the state at start
    removes those temporary files (months of crash restarts must not pile them up)."""
    path = tmp_path / "state.json"
    snapshot = large_snapshot(models=2, points_per_model=1500)
    save_snapshot(replace(snapshot, created_at_seconds=0.0), path)
    assert path.stat().st_size > 1_000_000
    rng = random.Random(8)
    kills = mid_write = 0
    seen: set[float] = set()
    left_behind: set[Path] = set()
    for attempt in range(15):
        targeted = attempt % 3 != 2
        child = os.fork()
        if child == 0:  # the writer: rewrite the file forever, until killed
            try:
                counter = 0
                while True:
                    counter += 1
                    save_snapshot(replace(snapshot, created_at_seconds=float(counter)), path)
            finally:
                os._exit(1)
        if targeted:
            deadline = time.monotonic() + 30
            while not set(_temporaries(tmp_path)) - left_behind:
                assert time.monotonic() < deadline, "the writer never started a write"
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, 0.002))
        else:
            time.sleep(rng.uniform(0.0, 1.0))
        os.kill(child, signal.SIGKILL)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        kills += 1
        leftovers = set(_temporaries(tmp_path)) - left_behind
        if leftovers:  # the kill landed mid-write; the temporary file stays until a restart
            mid_write += 1
            left_behind |= leftovers
        restored = Snapshot.from_dict(json.loads(path.read_text()))  # never half a document
        assert len(restored.devices[0].models) == 2
        seen.add(restored.created_at_seconds)
    print(f"\nkill -9 during writes: {kills} kills, {mid_write} mid-write, {len(seen)} versions")
    assert mid_write >= 3, f"only {mid_write} of {kills} kills landed during a write"
    # a restarted daemon loads the last whole snapshot and clears the interrupted writes
    assert load_snapshot(path) is not None
    assert _temporaries(tmp_path) == []
    assert not list(tmp_path.glob("state.json.corrupt-*"))


def test_a_snapshot_is_on_disk_before_any_scrape_can_see_it(tmp_path: Path) -> None:
    """Persist, then publish: a kill -9 right after a scrape never loses what the scrape saw.

    A thread watches ``daemon.snapshot()`` (what every scrape reads) while a cycle runs; the
    moment the calibrated snapshot appears, the state file must already hold it.
    """
    config = replace(
        default_config(devices=("cpu",)),
        worker_command=(sys.executable, FAKE_WORKER),
        worker_timeout_seconds=30.0,
    )
    path = tmp_path / "state.json"
    daemon = Daemon(config, ("cpu",), state_path=path)
    seen: list[Snapshot | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            current = daemon.snapshot()
            if current.devices[0].up:
                seen.append(load_snapshot(path) if path.exists() else None)
                seen.append(current)
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        daemon.run_cycles()
    finally:
        watcher.join(timeout=10)  # it returns once it has seen the calibrated snapshot
        done.set()
    assert len(seen) == 2, "the watcher never saw the calibrated snapshot"
    on_disk, served = seen
    assert on_disk is not None, "served before it was written"
    assert served is not None and on_disk.devices == served.devices


def test_a_snapshot_that_json_cannot_hold_is_counted_and_still_served(tmp_path: Path) -> None:
    """A NaN somewhere (the models or a bug) makes the strict JSON write fail: the daemon counts
    it as a state write error and serves the snapshot from memory instead of dropping it."""
    config = replace(default_config(devices=("cpu",)), worker_command=(sys.executable, FAKE_WORKER))
    snapshot = sample_snapshot()
    odd = replace(snapshot.devices[0], probe_device_seconds_total=math.nan)
    daemon = Daemon(
        config,
        ("cpu",),
        state_path=tmp_path / "state.json",
        initial=replace(snapshot, devices=(odd,)),
    )
    with records() as logged:
        assert daemon.save() is False
    assert daemon.snapshot().state_write_errors_total == snapshot.state_write_errors_total + 1
    assert "cannot write the state file; serving from memory" in logged.text()
    assert not (tmp_path / "state.json").exists() and _temporaries(tmp_path) == []


# --- unusable state files at start ---------------------------------------------------------------


def _good_state(tmp_path: Path) -> bytes:
    """A real state file written by a real cycle (fake worker, in process)."""
    config = replace(
        default_config(devices=("cpu",)),
        worker_command=(sys.executable, FAKE_WORKER),
        worker_timeout_seconds=30.0,
    )
    path = tmp_path / "good-state.json"
    daemon = Daemon(config, ("cpu",), state_path=path)
    daemon.run_cycles()
    assert daemon.snapshot().devices[0].up
    return path.read_bytes()


def _truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


def _wrong_version(good: bytes) -> bytes:
    document = json.loads(good)
    document["schema_version"] = 99
    return json.dumps(document).encode()


def _not_utf8(good: bytes) -> bytes:
    return b"\xff\xfe\x00garbage" + good[:100]


@pytest.mark.integration
@pytest.mark.parametrize("damage", [_truncated, _wrong_version, _not_utf8])
def test_an_unusable_state_file_is_moved_aside_and_the_daemon_starts_fresh(
    tmp_path: Path, damage: Any
) -> None:
    bad = damage(_good_state(tmp_path))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_bytes(bad)
    hanging = [sys.executable, FAKE_WORKER, "--mode", "hang"]  # no cycle replaces what is served
    daemon = DaemonProcess(tmp_path, daemon_config(tmp_path, hanging))
    try:
        samples = parse_metrics(daemon.get("/metrics")[1])
        assert up(samples) == 0.0
        assert capacity(samples) is None  # a fresh start: nothing from the unusable file
        assert daemon.get("/readyz")[0] == 503
        assert daemon.get("/healthz")[0] == 200
    finally:
        assert daemon.stop() == 0, daemon.log()
    asides = list(state_dir.glob("state.json.corrupt-*"))
    assert len(asides) == 1
    assert asides[0].read_bytes() == bad  # kept as it was, for an operator to look at
    log = daemon.log()
    assert 'level=warn logger=scaleprobe.state msg="state file unusable; moved aside' in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "content", [b"", b"[]", b"null", b"{}", b'{"schema_version": 1}', b"\x00" * 64]
)
def test_odd_state_files_are_moved_aside_in_process(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with records() as logged:
        assert load_snapshot(path) is None
    assert not path.exists()
    assert [p.read_bytes() for p in tmp_path.glob("state.json.corrupt-*")] == [content]
    assert "moved aside" in logged.text()


def test_a_directory_where_the_state_file_should_be_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    assert load_snapshot(path) is None
    assert not path.exists() and len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


# --- a read-only or full state directory ---------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "8m") -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def remount(directory: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` until it refuses another byte."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    # the last partial chunk may have been buffered: write byte by byte until refused
    with open(filler, "ab", buffering=0) as handle, contextlib.suppress(OSError):
        while handle.write(b"\0"):
            pass
    return filler


def write_errors(samples: Any) -> float:
    return sample(samples, "scaleprobe_state_write_errors_total") or 0.0


@pytest.mark.integration
def test_a_full_then_read_only_state_directory_is_counted_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "state") as state_dir:
        state = state_dir / "state.json"
        fake = [sys.executable, FAKE_WORKER]
        daemon = DaemonProcess(tmp_path, daemon_config(tmp_path, fake))
        try:
            daemon.wait_for(lambda s: up(s) == 1.0 and state.exists(), "a first state write")
            # full: the write fails, the old file stays whole, no temporary file is left behind
            filler = fill(state_dir)
            before = state.read_bytes()
            samples = daemon.wait_for(lambda s: write_errors(s) >= 1, "a write error (full)")
            assert up(samples) == 1.0 and capacity(samples)
            assert daemon.get("/readyz")[0] == 200
            assert state.read_bytes() == before
            assert load_snapshot(state) is not None
            assert _temporaries(state_dir) == []
            assert "No space left on device" in daemon.log()
            # space again: the next cycle writes a newer state
            filler.unlink()
            daemon.wait_for(lambda s: state.read_bytes() != before, "a write after space came back")
            # read-only: the same, with the reason in the log
            remount(state_dir, "ro")
            before = state.read_bytes()
            errors = write_errors(daemon.metrics())
            samples = daemon.wait_for(lambda s: write_errors(s) > errors, "a write error (ro)")
            assert up(samples) == 1.0 and capacity(samples)
            assert state.read_bytes() == before
            assert "Read-only file system" in daemon.log()
            remount(state_dir, "rw")
            daemon.wait_for(lambda s: state.read_bytes() != before, "a write after remount rw")
        finally:
            code = daemon.stop()
        assert code == 0, daemon.log()
        log = daemon.log()
        assert 'msg="cannot write the state file; serving from memory"' in log
        assert "msg=stopped state_saved=true" in log
        assert "Traceback" not in log
        loaded = load_snapshot(state)
        assert loaded is not None and loaded.state_write_errors_total >= 2


# --- NVML missing or failing ---------------------------------------------------------------------


class GuardedWorker:
    """A worker stand-in that runs the real guard (with an injected NVML) before its probes.

    It answers like the fake worker, with the guard's reading of the device in ``guard``, so the
    daemon gets exactly what the real worker reports when NVML is missing or failing.
    """

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.calls = 0

    def __call__(self, request: dict[str, Any], **_: Any) -> Any:
        self.calls += 1
        guard = Guard(request["device"], nvml=self.nvml)
        reading = guard.check()
        assert reading.outcome is None  # without NVML the guard lets the probes run
        document = fake_worker.result_document(request, 1.0, False)
        document["guard"] = reading.to_dict()
        return WorkerOutcome("ok", document, 0, 0.1, "", "fake")


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (None, "NVML not available"),
        (FakeNVML(fail_init=True), "NVML failed"),
        (FakeNVML(fail_queries=True), "NVML query failed"),
    ],
)
def test_nvml_missing_or_failing_is_degraded_said_once_and_probes_go_on(
    tmp_path: Path, nvml: Any, reason: str
) -> None:
    config = replace(default_config(devices=("cuda:0",)), worker_timeout_seconds=30.0)
    worker = GuardedWorker(nvml)
    daemon = Daemon(config, ("cuda:0",), state_path=tmp_path / "state.json", run_worker=worker)
    with records() as logged:
        for _ in range(3):
            daemon.run_cycles()
    assert worker.calls == 3
    device = daemon.snapshot().devices[0]
    assert device.up  # the probes went on and calibrated
    said = [r for r in logged.records if "guard" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(said) == 1, logged.text()  # said once, not per cycle
    assert reason in str(vars(said[0]))
    text = _exposition(daemon.snapshot())
    assert 'scaleprobe_guard_checked{device="cuda:0"} 0.0' in text


def _exposition(snapshot: Snapshot) -> str:
    from prometheus_client import generate_latest

    return generate_latest(default_registry(lambda: snapshot)).decode()


@pytest.mark.integration
def test_the_real_daemon_without_nvml_probes_the_cpu_and_says_so(tmp_path: Path) -> None:
    """This machine has no NVIDIA driver: ``devices: auto`` finds no GPU through NVML, says so
    once, and probes the CPU (with the fake worker, to stay fast)."""
    config = daemon_config(tmp_path, [sys.executable, FAKE_WORKER])
    del config["devices"]  # auto
    daemon = DaemonProcess(tmp_path, config)
    try:
        samples = daemon.wait_for(lambda s: up(s) == 1.0, "a cycle on the CPU")
        daemon.wait_for(
            lambda s: (
                (
                    sample(
                        s, "scaleprobe_probe_runs_total", device="cpu", probe="cycle", outcome="ok"
                    )
                    or 0
                )
                >= 2
            ),
            "a second cycle",
        )
        assert sample(samples, "scaleprobe_guard_checked", device="cpu") == 0.0
    finally:
        assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert log.count("no GPU found through NVML") == 1, log
    assert "Traceback" not in log
