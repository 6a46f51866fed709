"""The collector: golden exposition of a fixed snapshot, its values, and scrapes that never fail.

``UPDATE_GOLDEN=1 python -m pytest tests/test_collector.py`` rewrites tests/golden/metrics.prom on
purpose; review the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from pathlib import Path

import pytest
from conftest import require_binary
from prometheus import promtool_check_metrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from sample_snapshot import CREATED_AT_SECONDS, sample_snapshot
from scaleprobe.exporter.collector import SPECS, SnapshotCollector
from scaleprobe.exporter.snapshot import Snapshot

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def exposition(snapshot: Snapshot | None, now: float = CREATED_AT_SECONDS + 5) -> str:
    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(lambda: snapshot, clock=lambda: now, version="0.0.0+golden")
    )
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_exposition_matches_golden_file() -> None:
    text = exposition(sample_snapshot())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed: rerun with UPDATE_GOLDEN=1 and review"


def test_promtool_accepts_the_golden_file() -> None:
    """promtool parses the file and lints it clean, but for one deliberate exception.

    scaleprobe_device_info carries dcgm-exporter's camelCase labels (UUID, modelName) so that its
    series join with that exporter's; promtool's style lint flags exactly that (exit code 3, where
    a parse error would be 1). With those two labels renamed, the lint must be clean.
    """
    assert promtool_check_metrics(GOLDEN.read_text()) == []
    renamed = GOLDEN.read_text().replace(",UUID=", ",uuid=").replace(",modelName=", ",model_name=")
    clean = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=renamed,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout + clean.stderr == ""


def test_values_come_from_the_snapshot() -> None:
    text = exposition(sample_snapshot())
    point = {"device": "cpu", "model": "bert-base", "dtype": "float32"}
    b1 = {**point, "batch_size": "1", "seq_len": "128"}
    assert value(text, "scaleprobe_measured_throughput_sequences_per_second", **b1) == 4.0
    assert value(text, "scaleprobe_predicted_throughput_sequences_per_second", **b1) == 5.0
    assert value(text, "scaleprobe_measured_latency_seconds", **b1) == 0.25
    assert value(text, "scaleprobe_prediction_error_ratio", **b1) == -0.2
    assert value(text, "scaleprobe_baseline_error_ratio", **b1) == -0.1
    # predicted MFU 0.5 scaled by predicted/measured latency 0.2/0.25
    assert value(text, "scaleprobe_measured_model_flops_utilization_ratio", **b1) == 0.4
    assert value(text, "scaleprobe_predicted_capacity_tokens_per_second", **point) == 1280.0
    assert value(text, "scaleprobe_predicted_max_batch_size", **point, seq_len="512") == 96
    assert value(text, "scaleprobe_up", device="cpu") == 1
    assert value(text, "scaleprobe_up", device="cuda:0") == 0
    assert value(text, "scaleprobe_snapshot_age_seconds") == 5.0
    assert value(text, "scaleprobe_probe_device_seconds_total", device="cpu") == 42.5
    runs = "scaleprobe_probe_runs_total"
    assert value(text, runs, device="cpu", probe="model", outcome="ok") == 5
    # outcomes that have not happened yet are exported as zero, so rate() works from the start
    assert value(text, runs, device="cpu", probe="memory", outcome="timeout") == 0
    assert value(text, runs, device="cuda:0", probe="cycle", outcome="timeout") == 1
    # memory bandwidth fell from 1.6e10 (median of the earlier calibrations) to 1.2e10
    change = "scaleprobe_calibration_change_ratio"
    assert value(text, change, device="cpu", parameter="memory_bandwidth_bytes_per_second") == (
        pytest.approx(-0.25)
    )
    assert value(text, change, device="cpu", parameter="compute_flops_per_second_float32") == 0.0
    assert (
        value(
            text,
            "scaleprobe_device_info",
            device="cuda:0",
            gpu="0",
            UUID="GPU-00000000-1111-2222-3333-444444444444",
            modelName="NVIDIA A100-SXM4-80GB",
            driver_version="550.54.15",
        )
        == 1
    )
    assert value(text, "scaleprobe_cycle_consecutive_failures", device="cuda:0") == 2
    assert value(text, "scaleprobe_state_write_errors_total") == 1
    build = {"version": "0.0.0+golden", "torch_version": "2.13.0+cpu"}
    assert value(text, "scaleprobe_build_info", **build, transformers_version="5.23.0") == 1


def test_unmeasured_points_have_predictions_only() -> None:
    text = exposition(sample_snapshot())
    b8 = {"device": "cpu", "model": "bert-base", "dtype": "float32"}
    b8 |= {"batch_size": "8", "seq_len": "128"}
    key = frozenset(b8.items())
    found = samples(text)
    assert ("scaleprobe_predicted_latency_seconds", key) in found
    assert ("scaleprobe_measured_latency_seconds", key) not in found
    assert ("scaleprobe_prediction_error_ratio", key) not in found


def test_series_count_is_bounded_by_the_grid() -> None:
    """Per-point series exist only for the snapshot's grid points (cardinality stays bounded)."""
    text = exposition(sample_snapshot())
    predicted = [
        labels for (name, labels) in samples(text) if name == "scaleprobe_predicted_latency_seconds"
    ]
    assert len(predicted) == 4 + 1  # bert-base 2x2 grid, distilbert-base one point


def test_every_contract_metric_has_help_that_says_when_values_were_made() -> None:
    helps = {spec.name: spec.help for spec in SPECS}
    for name in (
        "scaleprobe_probe_compute_flops_per_second",
        "scaleprobe_measured_throughput_sequences_per_second",
        "scaleprobe_prediction_error_ratio",
    ):
        assert "not at scrape time" in helps[name]
    assert "before the refit" in helps["scaleprobe_prediction_error_ratio"]
    assert "baseline" in helps["scaleprobe_baseline_error_ratio"]


def test_no_snapshot_yet_still_serves_build_info() -> None:
    text = exposition(None)
    names = {name for name, _ in samples(text)}
    assert names == {"scaleprobe_build_info", "scaleprobe_collector_success"}
    assert value(text, "scaleprobe_collector_success") == 1


def test_a_broken_snapshot_gives_success_zero_not_a_failed_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snapshot = sample_snapshot()
    broken_device = dataclasses.replace(snapshot.devices[0], probe_runs_total=None)  # type: ignore[arg-type]
    broken = dataclasses.replace(snapshot, devices=(broken_device,))
    with caplog.at_level(logging.ERROR):
        text = exposition(broken)
    assert value(text, "scaleprobe_collector_success") == 0
    assert "rendering the snapshot failed" in caplog.text


def test_a_failing_snapshot_source_gives_success_zero() -> None:
    def explode() -> Snapshot:
        raise RuntimeError("state lost")

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(explode))
    text = generate_latest(registry).decode()
    assert value(text, "scaleprobe_collector_success") == 0


def test_openmetrics_exposition_renders_the_same_series() -> None:
    registry = CollectorRegistry()
    snapshot = sample_snapshot()
    registry.register(SnapshotCollector(lambda: snapshot, version="x"))
    text = generate_openmetrics(registry).decode()
    assert text.endswith("# EOF\n")
    assert 'scaleprobe_probe_runs_total{device="cpu",outcome="ok",probe="model"} 5.0' in text
