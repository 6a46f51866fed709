"""`scaleprobe once`: one cycle, tables, the calibration document and the status page file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from scaleprobe.exporter.config import default_config
from scaleprobe.exporter.once import ProgressBar, calibration_document, format_report, run_once
from scaleprobe.models.calibration import parse_calibration

FAKE_WORKER = str(Path(__file__).with_name("fake_worker.py"))


def write_config(tmp_path: Path, *worker_args: str) -> Path:
    path = tmp_path / "once.yml"
    command = json.dumps([sys.executable, FAKE_WORKER, *worker_args])
    path.write_text(f"worker: {{command: {command}}}\n")
    return path


def scaleprobe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scaleprobe.exporter.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_once_prints_calibration_and_measured_versus_predicted(tmp_path: Path) -> None:
    result = scaleprobe("once", "--config.file", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "device cpu (Fake CPU), float32" in out
    assert "compute" in out and "memory bandwidth" in out
    grid_points = len(default_config(devices=("cpu",)).grid())
    for model in ("distilbert-base", "bert-base", "bigbird-roberta-base"):
        rows = [line for line in out.splitlines() if line.startswith(model + " ")]
        assert len(rows) == grid_points + 1  # every grid point measured, plus the summary row
    assert "Traceback" not in result.stderr
    assert "\r[" not in result.stderr  # no progress bar when stderr is not a terminal


def test_once_json_round_trips_through_predict(tmp_path: Path) -> None:
    result = scaleprobe("once", "--config.file", str(write_config(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    params = parse_calibration(document)
    assert params.compute_flops_per_second["float32"] > 0
    assert document["device"]["modelName"] == "Fake CPU"
    assert document["fit"]["points"]
    path = tmp_path / "calibration.json"
    path.write_text(result.stdout)
    predicted = scaleprobe("predict", "--model", "bert-base", "--calibration", str(path), "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert "bert-base" in predicted.stdout


def test_once_report_writes_the_status_page(tmp_path: Path) -> None:
    report = tmp_path / "status.html"
    result = scaleprobe(
        "once", "--config.file", str(write_config(tmp_path)), "--report", str(report)
    )
    assert result.returncode == 0, result.stderr
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    for model in ("distilbert-base", "bert-base", "bigbird-roberta-base"):
        assert model in html


def test_once_report_into_a_missing_directory_is_refused_before_probing(tmp_path: Path) -> None:
    record = tmp_path / "request.json"
    result = scaleprobe(
        "once",
        "--config.file",
        str(write_config(tmp_path, "--record", str(record))),
        "--report",
        str(tmp_path / "nope" / "status.html"),
    )
    assert result.returncode == 2
    assert "--report: directory" in result.stderr and "Traceback" not in result.stderr
    assert not record.exists()  # no cycle was run


def test_a_failed_cycle_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = scaleprobe("once", "--config.file", str(write_config(tmp_path, "--mode", "fail")))
    assert result.returncode == 1
    assert "the probe cycle failed" in result.stderr
    assert "illegal memory access" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_text_and_document_agree(tmp_path: Path) -> None:
    config = default_config(devices=("cpu",))
    state = run_once(config, "cpu", command=[sys.executable, FAKE_WORKER])
    text = format_report(state, "float32")
    document = calibration_document(state, "float32")
    measured = [p for m in state.models for p in m.points if p.measured is not None]
    assert len(document["fit"]["points"]) == len(measured)
    assert document["fit"]["prior_mape_ratio"] == pytest.approx(
        sum(abs(p.prior_error_ratio or 0) for p in measured) / len(measured)
    )
    first = measured[0]
    assert f"{first.measured.latency_seconds * 1e3:.2f}" in text  # type: ignore[union-attr]
    # a CPU calibration's cache ladder is listed; without one (this fake worker's) nothing is
    assert "copy rate in cache" not in text
    ladder = [[524288.0, 4.4], [8388608.0, 2.1], [536870912.0, 1.0]]
    laddered = replace(
        state, calibration={**(state.calibration or {}), "bandwidth_ratio_by_working_set": ladder}
    )
    line = next(x for x in format_report(laddered, "float32").splitlines() if "in cache" in x)
    assert line.split(None, 4)[-1] == "512 KiB ×4.4, 8 MiB ×2.1, 512 MiB ×1.0"


def test_progress_bar() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    bar.update({"event": "progress", "done": 3, "total": 6, "probe": "model", "model": "bert-base"})
    assert "\r[#####.....] 3/6 model bert-base" in stream.getvalue()
    bar.update({"event": "log"})
    bar.finish()
    assert stream.getvalue().endswith("\r")


def test_ctrl_c_stops_the_worker_and_exits_130(tmp_path: Path) -> None:
    """The worker runs in its own session (the terminal's SIGINT misses it): once must end it."""
    import os
    import signal
    import time

    pidfile = tmp_path / "worker.pid"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scaleprobe.exporter.cli",
            "once",
            "--config.file",
            str(write_config(tmp_path, "--mode", "hang", "--pidfile", str(pidfile))),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(pidfile.read_text())
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
