"""The supervisor against fake workers (small ``python -c`` scripts) that misbehave on purpose:
each fault is reported as an outcome, never raised, and nothing is left running."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scaleprobe.exporter.supervisor import run_worker, validate_result

REQUEST = {"schema": "scaleprobe.worker/1", "device": "cpu", "dtype": "float32", "points": []}

GOOD_RESULT = {
    "schema": "scaleprobe.worker/1",
    "device": {
        "device": "cpu",
        "gpu": "",
        "UUID": "",
        "modelName": "Fake CPU",
        "driver_version": "",
    },
    "environment": {},
    "guard": {"checked": False, "reason": "no NVML on a CPU device"},
    "probes": [{"probe": "compute", "outcome": "ok", "value": 1.0e11, "unit": "flops_per_second"}],
    "points": [
        {
            "model": "bert-base",
            "batch_size": 1,
            "seq_len": 128,
            "outcome": "ok",
            "latency_seconds": 0.2,
        },
        {
            "model": "bert-base",
            "batch_size": 8,
            "seq_len": 512,
            "outcome": "skipped_budget",
            "reason": "x",
        },
    ],
    "duration_seconds": 1.5,
}


def fake(body: str) -> list[str]:
    """A fake worker command running ``body`` (``GOOD`` holds a valid result document)."""
    prelude = f"import json, os, signal, sys, time\nGOOD = {json.dumps(GOOD_RESULT)!r}\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


def test_a_good_worker_returns_its_result_and_progress() -> None:
    events: list[dict[str, Any]] = []
    outcome = run_worker(
        REQUEST,
        command=fake(
            """
            request = json.load(sys.stdin)
            doc = json.loads(GOOD)
            doc["environment"] = {"echo": request, "offline": os.environ.get("HF_HUB_OFFLINE")}
            print(json.dumps({"event": "progress", "done": 1, "total": 1, "probe": "compute"}),
                  file=sys.stderr, flush=True)
            print(json.dumps(doc))
            """
        ),
        timeout_seconds=30,
        on_event=events.append,
        env={"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "0"},
    )
    assert outcome.outcome == "ok", outcome.message
    assert outcome.returncode == 0 and not outcome.cancelled
    assert outcome.result is not None
    assert outcome.result["environment"]["echo"] == REQUEST  # the request arrived whole
    assert outcome.result["environment"]["offline"] == "1"  # forced, whatever env said
    assert outcome.result["points"] == GOOD_RESULT["points"]
    assert events == [{"event": "progress", "done": 1, "total": 1, "probe": "compute"}]


def test_a_crashing_worker_is_failed_with_its_last_words() -> None:
    outcome = run_worker(
        REQUEST,
        command=fake("raise RuntimeError('CUDA error: an illegal memory access')"),
        timeout_seconds=30,
    )
    assert outcome.outcome == "failed" and outcome.returncode == 1 and outcome.result is None
    assert "illegal memory access" in outcome.message
    assert "Traceback" in outcome.stderr_tail


def test_a_non_zero_exit_is_failed_even_with_a_document() -> None:
    outcome = run_worker(REQUEST, command=fake("print(GOOD); sys.exit(3)"), timeout_seconds=30)
    assert outcome.outcome == "failed" and outcome.returncode == 3
    assert "exited with code 3" in outcome.message


def test_a_hanging_worker_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    outcome = run_worker(REQUEST, command=fake("time.sleep(120)"), timeout_seconds=1.0)
    assert outcome.outcome == "timeout"
    assert outcome.returncode == -15  # SIGTERM was enough
    assert 1.0 <= outcome.duration_seconds < 10 and time.monotonic() - started < 15


def test_a_worker_ignoring_sigterm_gets_sigkill_after_the_grace() -> None:
    outcome = run_worker(
        REQUEST,
        command=fake(
            """
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring SIGTERM", file=sys.stderr, flush=True)
            time.sleep(120)
            """
        ),
        timeout_seconds=1.0,
        kill_grace_seconds=0.5,
    )
    assert outcome.outcome == "timeout" and outcome.returncode == -9
    assert outcome.duration_seconds < 10


def test_a_worker_killed_mid_run_is_failed_and_its_progress_kept() -> None:
    events: list[dict[str, Any]] = []
    outcome = run_worker(
        REQUEST,
        command=fake(
            """
            print(json.dumps({"event": "progress", "done": 1, "total": 3}), file=sys.stderr,
                  flush=True)
            sys.stdout.write(GOOD[:40]); sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            """
        ),
        timeout_seconds=30,
        on_event=events.append,
    )
    assert outcome.outcome == "failed" and outcome.returncode == -9
    assert "SIGKILL" in outcome.message
    assert events == [{"event": "progress", "done": 1, "total": 3}]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("print('hello, I am not JSON')", "not one JSON document"),
        ("sys.stdout.write(GOOD[: len(GOOD) // 2])", "not one JSON document"),
        ("print(GOOD); print(GOOD)", "not one JSON document"),
        ("pass", "not one JSON document"),
        ("sys.stdout.buffer.write(b'\\xff\\xfe garbage')", "not one JSON document"),
        ("print(GOOD.replace('worker/1', 'worker/2'))", "schema"),
        ("print(json.dumps([1, 2, 3]))", "not a JSON object"),
    ],
)
def test_malformed_output_is_reported(body: str, needle: str) -> None:
    outcome = run_worker(REQUEST, command=fake(body), timeout_seconds=30)
    assert outcome.outcome == "malformed" and outcome.returncode == 0
    assert needle in outcome.message and outcome.result is None


def test_result_shape_problems_are_listed() -> None:
    doc = json.loads(json.dumps(GOOD_RESULT))
    doc["device"]["UUID"] = None
    doc["probes"][0]["outcome"] = "great"
    doc["points"][0]["latency_seconds"] = -1
    del doc["points"][1]["seq_len"]
    problems = validate_result(doc)
    assert len(problems) == 4
    assert validate_result(GOOD_RESULT) == []


def test_a_worker_that_leaves_a_child_behind_does_not_hang_the_supervisor() -> None:
    pids: list[int] = []
    outcome = run_worker(
        REQUEST,
        command=fake(
            """
            import subprocess
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            print(json.dumps({"event": "child", "pid": child.pid}), file=sys.stderr, flush=True)
            print(GOOD)
            """
        ),
        timeout_seconds=30,
        on_event=lambda event: pids.append(event["pid"]),
    )
    assert outcome.outcome == "ok" and outcome.duration_seconds < 10
    (pid,) = pids
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break  # a zombie waiting for init to reap it: dead
        time.sleep(0.05)
    else:
        assert not Path(f"/proc/{pid}").exists(), "the worker's child outlived it"


def test_cancel_ends_a_running_worker_from_another_thread() -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    try:
        outcome = run_worker(
            REQUEST, command=fake("time.sleep(120)"), timeout_seconds=60, cancel=cancel
        )
    finally:
        timer.cancel()
    assert outcome.outcome == "failed" and outcome.cancelled
    assert "cancelled" in outcome.message and outcome.duration_seconds < 10


def test_a_missing_worker_command_is_failed_not_raised(tmp_path: Path) -> None:
    outcome = run_worker(REQUEST, command=[str(tmp_path / "no-such-worker")], timeout_seconds=5)
    assert outcome.outcome == "failed" and outcome.returncode is None
    assert "could not start worker" in outcome.message


def test_a_worker_that_never_reads_a_large_request_does_not_block() -> None:
    big = {**REQUEST, "padding": "x" * 4_000_000}
    outcome = run_worker(big, command=fake("print(GOOD)"), timeout_seconds=30)
    assert outcome.outcome == "ok"


def test_stdout_past_the_limit_is_malformed() -> None:
    outcome = run_worker(
        REQUEST,
        command=fake("sys.stdout.write('x' * 10_000_000); time.sleep(60)"),
        timeout_seconds=30,
        max_stdout_bytes=100_000,
    )
    assert outcome.outcome == "malformed" and "more than" in outcome.message
    assert outcome.duration_seconds < 20


def test_log_lines_are_relayed_with_the_device(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scaleprobe.exporter.supervisor")

    def broken_display(event: dict[str, Any]) -> None:
        raise ValueError("progress bar fell over")

    outcome = run_worker(
        {**REQUEST, "device": "cuda:3"},
        command=fake(
            """
            print("level=info msg=warming up", file=sys.stderr, flush=True)
            print(json.dumps({"event": "progress", "done": 1, "total": 1}), file=sys.stderr,
                  flush=True)
            print(GOOD)
            """
        ),
        timeout_seconds=30,
        on_event=broken_display,
    )
    assert outcome.outcome == "ok"
    relayed = [r for r in caplog.records if "warming up" in r.getMessage()]
    assert relayed and relayed[0].device == "cuda:3"  # type: ignore[attr-defined]
    assert "warming up" in outcome.stderr_tail
    final = [r for r in caplog.records if r.getMessage().startswith("worker ok")]
    assert final and final[0].device == "cuda:3"  # type: ignore[attr-defined]


def test_the_worker_runs_at_the_configured_niceness() -> None:
    """``worker.nice`` reaches the worker process (through ``nice -n``): it reports its own."""
    from scaleprobe.exporter.config import default_config
    from scaleprobe.exporter.cycle import worker_command

    reporter = "import os, sys; sys.stderr.write(f'niceness={os.nice(0)}\\n')"
    config = replace(default_config(), worker_command=(sys.executable, "-c", reporter))
    for nice in (0, 7):
        command = worker_command(replace(config, worker_nice=nice))
        outcome = run_worker(REQUEST, command=command, timeout_seconds=30)
        expected = min(19, os.nice(0) + nice)
        assert f"niceness={expected}" in outcome.stderr_tail, outcome
