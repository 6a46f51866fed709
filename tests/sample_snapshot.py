"""A fixed Snapshot built from literal values, shared by the collector, API and HTTP tests.

Two devices: a calibrated CPU with two models (some grid points measured, some only predicted, a
calibration history with a fall of the memory bandwidth) and a GPU whose first cycle failed (no
calibration yet), so the renderers are exercised on both.
"""

from __future__ import annotations

from scaleprobe.exporter.snapshot import (
    CalibrationSample,
    DeviceState,
    Figures,
    Measurement,
    ModelState,
    PointRecord,
    Snapshot,
)

CREATED_AT_SECONDS = 1_795_000_000.0


def figures(latency_seconds: float, batch_size: int, seq_len: int, **overrides: object) -> Figures:
    values: dict[str, object] = {
        "latency_seconds": latency_seconds,
        "throughput_sequences_per_second": batch_size / latency_seconds,
        "throughput_tokens_per_second": batch_size * seq_len / latency_seconds,
        "framework_overhead_ratio": 0.25,
        "mfu_ratio": 0.5,
        "regime": "compute",
        "peak_memory_bytes": 1.5e9,
        "fits_in_memory": True,
    }
    values.update(overrides)
    return Figures(**values)  # type: ignore[arg-type]


def bert_points() -> tuple[PointRecord, ...]:
    return (
        PointRecord(
            batch_size=1,
            seq_len=128,
            predicted=figures(0.2, 1, 128, regime="framework", framework_overhead_ratio=0.5),
            measured=Measurement(
                latency_seconds=0.25,
                framework_overhead_ratio=0.4,
                peak_memory_bytes=1.0e9,
                timestamp_seconds=CREATED_AT_SECONDS - 60,
                spread_ratio=0.03,
            ),
            prior_error_ratio=-0.2,
            baseline_error_ratio=-0.1,
        ),
        PointRecord(batch_size=8, seq_len=128, predicted=figures(0.8, 8, 128)),
        PointRecord(
            batch_size=1,
            seq_len=512,
            predicted=figures(0.5, 1, 512),
            measured=Measurement(
                latency_seconds=0.5,
                framework_overhead_ratio=None,
                peak_memory_bytes=None,
                timestamp_seconds=CREATED_AT_SECONDS - 30,
            ),
            prior_error_ratio=0.0,
            baseline_error_ratio=None,
        ),
        PointRecord(batch_size=8, seq_len=512, predicted=figures(3.2, 8, 512)),
    )


def sample_snapshot() -> Snapshot:
    cpu = DeviceState(
        device="cpu",
        identity={"gpu": "", "UUID": "", "modelName": "Test CPU", "driver_version": ""},
        up=True,
        calibration={"compute_flops_per_second": {"float32": 2.0e11}},
        calibration_timestamp_seconds=CREATED_AT_SECONDS - 10,
        baseline={"compute_flops_per_second": {"float32": 2.0e11}},
        history=(
            CalibrationSample(CREATED_AT_SECONDS - 3600, {"float32": 2.0e11}, 1.6e10, 4e-6),
            CalibrationSample(CREATED_AT_SECONDS - 1800, {"float32": 1.8e11}, 1.6e10, 5e-6),
            CalibrationSample(CREATED_AT_SECONDS - 10, {"float32": 1.9e11}, 1.2e10, 5e-6),
        ),
        models=(
            ModelState(
                model="bert-base",
                dtype="float32",
                serving_batch_size=8,
                serving_seq_len=128,
                capacity=figures(0.8, 8, 128),
                points=bert_points(),
                max_batch_size={128: 512, 512: 96},
                mape_ratio=0.1,
                drift_ratio=-0.1,
            ),
            ModelState(
                model="distilbert-base",
                dtype="float32",
                serving_batch_size=1,
                serving_seq_len=128,
                capacity=figures(0.1, 1, 128),
                points=(PointRecord(batch_size=1, seq_len=128, predicted=figures(0.1, 1, 128)),),
                max_batch_size={128: 1024},
            ),
        ),
        probe_runs_total={("compute", "ok"): 3, ("model", "ok"): 5, ("model", "skipped_budget"): 1},
        probe_duration_seconds={"compute": 0.9, "memory": 0.5, "dispatch": 0.25, "model": 3.0},
        probe_device_seconds_total=42.5,
        environment={"torch_version": "2.13.0+cpu", "threads": 2},
        guard={"checked": False, "reason": "no NVML on a CPU device"},
        last_cycle_timestamp_seconds=CREATED_AT_SECONDS - 5,
        last_cycle_outcome="ok",
    )
    gpu = DeviceState(
        device="cuda:0",
        identity={
            "gpu": "0",
            "UUID": "GPU-00000000-1111-2222-3333-444444444444",
            "modelName": "NVIDIA A100-SXM4-80GB",
            "driver_version": "550.54.15",
        },
        up=False,
        calibration=None,
        calibration_timestamp_seconds=None,
        baseline=None,
        history=(),
        models=(),
        probe_runs_total={("cycle", "timeout"): 1},
        probe_duration_seconds={},
        probe_device_seconds_total=0.0,
        last_cycle_timestamp_seconds=CREATED_AT_SECONDS - 1,
        last_cycle_outcome="timeout",
        last_cycle_reason="worker killed after 600 s",
        consecutive_failures=2,
    )
    return Snapshot(
        created_at_seconds=CREATED_AT_SECONDS,
        build={"version": "0.1.0", "torch_version": "2.13.0+cpu", "transformers_version": "5.23.0"},
        devices=(cpu, gpu),
        state_write_errors_total=1,
    )
