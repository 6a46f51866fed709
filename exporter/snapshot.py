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

from dataclasses import asdict, dataclass, field, replace
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
    # the memory probe's figure on the CPU (None on a GPU, and in state files written before it)
    first_touch_seconds_per_byte: float | None = None
    # the elementwise share the probes measured on the CPU (models.fit.measured_elementwise_ratio;
    # None where they did not: a GPU, glibc's defaults, state files written before it)
    elementwise_bandwidth_ratio: float | None = None
    # the small products' half size x½ this calibration read (models.fit.calibrate; None in state
    # files written before it)
    gemm_half_size: float | None = None


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
    environment: dict[str, Any] = field(default_factory=dict)  # worker's torch version, threads
    # the last cycle: when it ended, its outcome (ok, failed, timeout, malformed, ...) and why
    last_cycle_timestamp_seconds: float | None = None
    last_cycle_outcome: str = ""
    last_cycle_reason: str = ""
    consecutive_failures: int = 0  # drives the retry backoff; 0 after a good cycle


@dataclass(frozen=True)
class Snapshot:
    created_at_seconds: float
    build: dict[str, str]  # version, torch_version, transformers_version
    devices: tuple[DeviceState, ...]
    schema_version: int = SCHEMA_VERSION
    # the state file could not be written (read-only or full disk): the daemon keeps serving
    state_write_errors_total: int = 0

    def device(self, name: str) -> DeviceState | None:
        return next((d for d in self.devices if d.device == name), None)

    def with_device(self, state: DeviceState, created_at_seconds: float) -> Snapshot:
        """A new snapshot with ``state`` replacing the device of the same name (or added)."""
        devices = [d for d in self.devices if d.device != state.device]
        devices.append(state)
        order = {d.device: i for i, d in enumerate(self.devices)}
        devices.sort(key=lambda d: order.get(d.device, len(order)))
        return replace(self, devices=tuple(devices), created_at_seconds=created_at_seconds)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the state file); ``from_dict`` reads it back unchanged."""
        return {
            "schema_version": self.schema_version,
            "created_at_seconds": self.created_at_seconds,
            "build": dict(self.build),
            "state_write_errors_total": self.state_write_errors_total,
            "devices": [_device_to_dict(d) for d in self.devices],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        """The inverse of ``to_dict``; raises ValueError, KeyError or TypeError if malformed."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"snapshot schema_version {version!r}, this build reads {SCHEMA_VERSION}"
            )
        return cls(
            created_at_seconds=float(data["created_at_seconds"]),
            build={str(k): str(v) for k, v in data["build"].items()},
            devices=tuple(_device_from_dict(d) for d in data["devices"]),
            schema_version=SCHEMA_VERSION,
            state_write_errors_total=int(data.get("state_write_errors_total", 0)),
        )


def empty_snapshot(build: dict[str, str], created_at_seconds: float) -> Snapshot:
    """What the daemon serves before its first calibration (and without a state file)."""
    return Snapshot(created_at_seconds=created_at_seconds, build=dict(build), devices=())


def empty_device_state(device: str) -> DeviceState:
    """A device that has not produced a calibration yet."""
    return DeviceState(
        device=device,
        identity={"gpu": "", "UUID": "", "modelName": "", "driver_version": ""},
        up=False,
        calibration=None,
        calibration_timestamp_seconds=None,
        baseline=None,
        history=(),
        models=(),
        probe_runs_total={},
        probe_duration_seconds={},
        probe_device_seconds_total=0.0,
    )


# --- serialisation ---------------------------------------------------------------------------
# Explicit per type (not dataclasses.asdict): tuple keys and int keys need turning into JSON, and
# reading back must rebuild the frozen types, not leave dicts where readers expect attributes.


def _figures_from_dict(data: dict[str, Any]) -> Figures:
    return Figures(
        latency_seconds=float(data["latency_seconds"]),
        throughput_sequences_per_second=float(data["throughput_sequences_per_second"]),
        throughput_tokens_per_second=float(data["throughput_tokens_per_second"]),
        framework_overhead_ratio=float(data["framework_overhead_ratio"]),
        mfu_ratio=float(data["mfu_ratio"]),
        regime=str(data["regime"]),
        peak_memory_bytes=float(data["peak_memory_bytes"]),
        fits_in_memory=bool(data["fits_in_memory"]),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _measurement_from_dict(data: dict[str, Any] | None) -> Measurement | None:
    if data is None:
        return None
    return Measurement(
        latency_seconds=float(data["latency_seconds"]),
        framework_overhead_ratio=_optional_float(data.get("framework_overhead_ratio")),
        peak_memory_bytes=_optional_float(data.get("peak_memory_bytes")),
        timestamp_seconds=float(data["timestamp_seconds"]),
        spread_ratio=_optional_float(data.get("spread_ratio")),
    )


def _point_to_dict(point: PointRecord) -> dict[str, Any]:
    return {
        "batch_size": point.batch_size,
        "seq_len": point.seq_len,
        "predicted": asdict(point.predicted),
        "measured": None if point.measured is None else asdict(point.measured),
        "prior_error_ratio": point.prior_error_ratio,
        "baseline_error_ratio": point.baseline_error_ratio,
    }


def _point_from_dict(data: dict[str, Any]) -> PointRecord:
    return PointRecord(
        batch_size=int(data["batch_size"]),
        seq_len=int(data["seq_len"]),
        predicted=_figures_from_dict(data["predicted"]),
        measured=_measurement_from_dict(data.get("measured")),
        prior_error_ratio=_optional_float(data.get("prior_error_ratio")),
        baseline_error_ratio=_optional_float(data.get("baseline_error_ratio")),
    )


def _model_to_dict(model: ModelState) -> dict[str, Any]:
    return {
        "model": model.model,
        "dtype": model.dtype,
        "serving_batch_size": model.serving_batch_size,
        "serving_seq_len": model.serving_seq_len,
        "capacity": asdict(model.capacity),
        "points": [_point_to_dict(p) for p in model.points],
        "max_batch_size": {str(k): v for k, v in model.max_batch_size.items()},
        "mape_ratio": model.mape_ratio,
        "drift_ratio": model.drift_ratio,
    }


def _model_from_dict(data: dict[str, Any]) -> ModelState:
    return ModelState(
        model=str(data["model"]),
        dtype=str(data["dtype"]),
        serving_batch_size=int(data["serving_batch_size"]),
        serving_seq_len=int(data["serving_seq_len"]),
        capacity=_figures_from_dict(data["capacity"]),
        points=tuple(_point_from_dict(p) for p in data["points"]),
        max_batch_size={int(k): int(v) for k, v in data.get("max_batch_size", {}).items()},
        mape_ratio=_optional_float(data.get("mape_ratio")),
        drift_ratio=_optional_float(data.get("drift_ratio")),
    )


def _sample_from_dict(data: dict[str, Any]) -> CalibrationSample:
    return CalibrationSample(
        timestamp_seconds=float(data["timestamp_seconds"]),
        compute_flops_per_second={
            str(k): float(v) for k, v in data["compute_flops_per_second"].items()
        },
        memory_bandwidth_bytes_per_second=float(data["memory_bandwidth_bytes_per_second"]),
        dispatch_seconds=float(data["dispatch_seconds"]),
        first_touch_seconds_per_byte=_optional_float(data.get("first_touch_seconds_per_byte")),
        elementwise_bandwidth_ratio=_optional_float(data.get("elementwise_bandwidth_ratio")),
        gemm_half_size=_optional_float(data.get("gemm_half_size")),
    )


def _device_to_dict(device: DeviceState) -> dict[str, Any]:
    return {
        "device": device.device,
        "identity": dict(device.identity),
        "up": device.up,
        "calibration": device.calibration,
        "calibration_timestamp_seconds": device.calibration_timestamp_seconds,
        "baseline": device.baseline,
        "history": [asdict(h) for h in device.history],
        "models": [_model_to_dict(m) for m in device.models],
        "probe_runs_total": [
            {"probe": probe, "outcome": outcome, "count": count}
            for (probe, outcome), count in sorted(device.probe_runs_total.items())
        ],
        "probe_duration_seconds": dict(device.probe_duration_seconds),
        "probe_device_seconds_total": device.probe_device_seconds_total,
        "guard": device.guard,
        "environment": device.environment,
        "last_cycle_timestamp_seconds": device.last_cycle_timestamp_seconds,
        "last_cycle_outcome": device.last_cycle_outcome,
        "last_cycle_reason": device.last_cycle_reason,
        "consecutive_failures": device.consecutive_failures,
    }


def _device_from_dict(data: dict[str, Any]) -> DeviceState:
    return DeviceState(
        device=str(data["device"]),
        identity={str(k): str(v) for k, v in data["identity"].items()},
        up=bool(data["up"]),
        calibration=data.get("calibration"),
        calibration_timestamp_seconds=_optional_float(data.get("calibration_timestamp_seconds")),
        baseline=data.get("baseline"),
        history=tuple(_sample_from_dict(h) for h in data.get("history", [])),
        models=tuple(_model_from_dict(m) for m in data.get("models", [])),
        probe_runs_total={
            (str(r["probe"]), str(r["outcome"])): int(r["count"])
            for r in data.get("probe_runs_total", [])
        },
        probe_duration_seconds={
            str(k): float(v) for k, v in data.get("probe_duration_seconds", {}).items()
        },
        probe_device_seconds_total=float(data.get("probe_device_seconds_total", 0.0)),
        guard=dict(data.get("guard") or {}),
        environment=dict(data.get("environment") or {}),
        last_cycle_timestamp_seconds=_optional_float(data.get("last_cycle_timestamp_seconds")),
        last_cycle_outcome=str(data.get("last_cycle_outcome", "")),
        last_cycle_reason=str(data.get("last_cycle_reason", "")),
        consecutive_failures=int(data.get("consecutive_failures", 0)),
    )
