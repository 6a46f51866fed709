"""The snapshot is the state file's content: it must read back exactly as it was written."""

from __future__ import annotations

import json

import pytest
from scaleprobe.exporter.snapshot import (
    SCHEMA_VERSION,
    CalibrationSample,
    DeviceState,
    Figures,
    Measurement,
    ModelState,
    PointRecord,
    Snapshot,
    empty_device_state,
    empty_snapshot,
)


def figures(latency_seconds: float, batch_size: int = 1, seq_len: int = 128) -> Figures:
    return Figures(
        latency_seconds=latency_seconds,
        throughput_sequences_per_second=batch_size / latency_seconds,
        throughput_tokens_per_second=batch_size * seq_len / latency_seconds,
        framework_overhead_ratio=0.25,
        mfu_ratio=0.4,
        regime="compute",
        peak_memory_bytes=1.5e9,
        fits_in_memory=True,
    )


def sample_snapshot(created_at_seconds: float = 1795000000.0) -> Snapshot:
    """A snapshot with every kind of field filled (None and not None)."""
    measured = PointRecord(
        batch_size=1,
        seq_len=128,
        predicted=figures(0.2),
        measured=Measurement(0.21, 0.1, 4.0e8, created_at_seconds - 5, spread_ratio=0.03),
        prior_error_ratio=-0.05,
        baseline_error_ratio=0.02,
    )
    unmeasured = PointRecord(batch_size=4, seq_len=128, predicted=figures(0.6, 4))
    model = ModelState(
        model="bert-base",
        dtype="float32",
        serving_batch_size=4,
        serving_seq_len=128,
        capacity=figures(0.6, 4),
        points=(measured, unmeasured),
        max_batch_size={128: 512, 256: 300},
        mape_ratio=0.05,
        drift_ratio=-0.05,
    )
    device = DeviceState(
        device="cpu",
        identity={"gpu": "", "UUID": "", "modelName": "Test CPU", "driver_version": ""},
        up=True,
        calibration={"compute_flops_per_second": {"float32": 1.9e11}, "x": [1, 2]},
        calibration_timestamp_seconds=created_at_seconds - 10,
        baseline={"compute_flops_per_second": {"float32": 2.0e11}},
        history=(
            CalibrationSample(created_at_seconds - 100, {"float32": 2.0e11}, 1.5e10, 4e-6),
            CalibrationSample(created_at_seconds - 10, {"float32": 1.9e11}, 1.4e10, 5e-6),
        ),
        models=(model,),
        probe_runs_total={("cycle", "ok"): 3, ("model", "skipped_budget"): 2},
        probe_duration_seconds={"compute": 0.9, "cycle": 41.0},
        probe_device_seconds_total=120.5,
        guard={"checked": False, "reason": "no NVML on a CPU device"},
        environment={"torch_version": "2.13.0+cpu", "threads": 2},
        last_cycle_timestamp_seconds=created_at_seconds - 1,
        last_cycle_outcome="ok",
        consecutive_failures=0,
    )
    return Snapshot(
        created_at_seconds=created_at_seconds,
        build={"version": "0.1.0", "torch_version": "2.13.0", "transformers_version": "5.23.0"},
        devices=(device,),
        state_write_errors_total=1,
    )


def test_round_trip_through_json_is_exact() -> None:
    snapshot = sample_snapshot()
    text = json.dumps(snapshot.to_dict(), allow_nan=False)
    assert Snapshot.from_dict(json.loads(text)) == snapshot


def test_int_and_tuple_keys_come_back_typed() -> None:
    back = Snapshot.from_dict(json.loads(json.dumps(sample_snapshot().to_dict())))
    device = back.devices[0]
    assert device.probe_runs_total[("cycle", "ok")] == 3
    assert device.models[0].max_batch_size[128] == 512
    assert isinstance(device.models[0].points[0].measured, Measurement)


def test_other_schema_version_is_refused() -> None:
    data = sample_snapshot().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema_version"):
        Snapshot.from_dict(data)


def test_with_device_replaces_in_place_and_keeps_order() -> None:
    snapshot = sample_snapshot()
    other = empty_device_state("cuda:1")
    grown = snapshot.with_device(other, 5.0)
    assert [d.device for d in grown.devices] == ["cpu", "cuda:1"]
    replaced = grown.with_device(empty_device_state("cpu"), 6.0)
    assert [d.device for d in replaced.devices] == ["cpu", "cuda:1"]
    assert replaced.device("cpu") == empty_device_state("cpu")
    assert replaced.created_at_seconds == 6.0
    assert snapshot.devices[0].up  # the original is untouched


def test_empty_snapshot_round_trips() -> None:
    snapshot = empty_snapshot({"version": "0.1.0"}, 1.0).with_device(empty_device_state("cpu"), 2)
    assert Snapshot.from_dict(snapshot.to_dict()) == snapshot


def test_measured_throughput_and_mfu_follow_the_measurement() -> None:
    point = sample_snapshot().devices[0].models[0].points[0]
    assert point.measured_throughput_sequences_per_second == pytest.approx(1 / 0.21)
    assert point.measured_mfu_ratio == pytest.approx(0.4 * 0.2 / 0.21)
    assert isinstance(sample_snapshot().devices[0], DeviceState)
