"""The snapshot: everything the daemon knows after its latest probe cycle, as one immutable value.

The daemon builds a new ``Snapshot`` after every cycle and swaps it in whole; the collector, the
JSON API and the status page only read it (render at scrape time, nothing shared is mutated).
The state file is this value as JSON (``Snapshot.to_dict`` / ``Snapshot.from_dict``), so a
restarted daemon serves its last calibration at once.

Drift is kept honest here: ``PointRecord.prior_error_ratio`` compares a measurement with what the
model predicted *before* the refit that used it, and ``baseline_error_ratio`` with a pinned baseline
calibration, so a device that slows down shows as drift instead of being absorbed by the next refit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Figures:
    """Predicted figures at one (model, batch, sequence) point; units in the names."""

    latency_seconds: float
    throughput_sequences_per_second: float
    throughput_tokens_per_second: float
    framework_overhead_ratio: float
    mfu_ratio: float
    regime: str  # "framework", "memory" or "compute"
    peak_memory_bytes: float
    fits_in_memory: bool


@dataclass(frozen=True)
class Measurement:
    """What the model probe measured at one point (median of its samples)."""

    latency_seconds: float
    framework_overhead_ratio: float | None
    peak_memory_bytes: float | None
    timestamp_seconds: float
    spread_ratio: float | None = None  # interquartile range / median of the samples


@dataclass(frozen=True)
class PointRecord:
    """One grid point of one model on one device."""

    batch_size: int
    seq_len: int
    predicted: Figures  # by the current (refitted) calibration
    measured: Measurement | None = None  # latest measurement, if this point was ever measured
    # (measured - predicted) / predicted, with the prediction made *before* the refit that used the
    # measurement: the drift signal a refit cannot hide.
    prior_error_ratio: float | None = None
    # (measured - predicted) / predicted, against the pinned baseline calibration.
    baseline_error_ratio: float | None = None

    @property
    def measured_throughput_sequences_per_second(self) -> float | None:
        if self.measured is None:
            return None
        return self.batch_size / self.measured.latency_seconds

    @property
    def measured_mfu_ratio(self) -> float | None:
        """Model-FLOPs utilisation of the measurement (predicted MFU scaled by latency ratio)."""
        if self.measured is None:
            return None
        predicted = self.predicted
        return predicted.mfu_ratio * predicted.latency_seconds / self.measured.latency_seconds


@dataclass(frozen=True)
class ModelState:
    """One inference model on one device: its curve, its serving point, its error."""

    model: str
    dtype: str
    serving_batch_size: int
    serving_seq_len: int
    capacity: Figures  # predicted at the serving point
    points: tuple[PointRecord, ...]
    # seq_len -> the largest batch that fits in the device's memory
    max_batch_size: dict[int, int] = field(default_factory=dict)
    mape_ratio: float | None = None  # mean |prior error| over this cycle's measured points
    drift_ratio: float | None = None  # median prior error of the latest measured points


@dataclass(frozen=True)
class CalibrationSample:
    """One calibration in the device's history (for throttling / noisy-neighbour detection)."""

    timestamp_seconds: float
    compute_flops_per_second: dict[str, float]
    memory_bandwidth_bytes_per_second: float
    dispatch_seconds: float


@dataclass(frozen=True)
class DeviceState:
    device: str  # "cpu", "cuda:0"
    identity: dict[str, str]  # gpu, UUID, modelName, driver_version (dcgm-exporter's labels)
    up: bool  # the last cycle produced a calibration
    calibration: dict[str, Any] | None  # DeviceParams.to_dict() of the current calibration
    calibration_timestamp_seconds: float | None
    baseline: dict[str, Any] | None  # DeviceParams.to_dict() of the pinned baseline
    history: tuple[CalibrationSample, ...]
    models: tuple[ModelState, ...]
    # cumulative counters, persisted so they survive restarts without resetting
    probe_runs_total: dict[tuple[str, str], int]  # (probe, outcome) -> count
    probe_duration_seconds: dict[str, float]  # probe -> duration of its last run
    probe_device_seconds_total: float
    guard: dict[str, Any] = field(default_factory=dict)  # what the guard checked or could not


@dataclass(frozen=True)
class Snapshot:
    created_at_seconds: float
    build: dict[str, str]  # version, torch_version, transformers_version
    devices: tuple[DeviceState, ...]
    schema_version: int = SCHEMA_VERSION
