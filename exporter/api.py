"""The JSON documents of ``/api/v1/capacity`` and ``/api/v1/curves``, built from a snapshot.

Their shapes are the contract in ``docs/internals.md``: autoscalers read the capacity document,
the status page and ``scaleprobe once --report`` render the curves document. Both are plain dicts
of JSON types, built afresh from the immutable snapshot for every request; a number that is not
finite (which JSON cannot hold) becomes ``null``.
"""

from __future__ import annotations

import math
from typing import Any

from scaleprobe.exporter.snapshot import (
    DeviceState,
    Figures,
    Measurement,
    ModelState,
    PointRecord,
    Snapshot,
)


def capacity_document(snapshot: Snapshot | None, now: float) -> dict[str, Any]:
    """Predicted capacity at each model's serving point, per device, for autoscalers.

    ``ready`` is false for a device with no calibration yet: its figures are absent, and an
    autoscaler should hold its current scale rather than act on them.
    """
    devices = [] if snapshot is None else snapshot.devices
    return {
        "generated_at_seconds": now,
        "devices": [_capacity_device(device) for device in devices],
    }


def curves_document(
    snapshot: Snapshot | None, now: float, stale_after_seconds: float | None = None
) -> dict[str, Any]:
    """Every grid point of every model with its predicted and (where measured) measured figures.

    A device is ``stale`` when its last cycle produced no calibration (the figures shown are the
    last good ones) or, given ``stale_after_seconds``, when its calibration is older than that.
    """
    devices = [] if snapshot is None else snapshot.devices
    return {
        "generated_at_seconds": now,
        "devices": [_curves_device(device, now, stale_after_seconds) for device in devices],
    }


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _is_ready(device: DeviceState) -> bool:
    return device.calibration is not None and device.calibration_timestamp_seconds is not None


def _capacity_device(device: DeviceState) -> dict[str, Any]:
    ready = _is_ready(device)
    return {
        "device": device.device,
        "modelName": device.identity.get("modelName", ""),
        "calibration_timestamp_seconds": _number(device.calibration_timestamp_seconds),
        "ready": ready,
        "models": [_capacity_model(model) for model in device.models] if ready else [],
    }


def _capacity_model(model: ModelState) -> dict[str, Any]:
    max_batch_size = model.max_batch_size.get(model.serving_seq_len)
    return {
        "model": model.model,
        "dtype": model.dtype,
        "batch_size": model.serving_batch_size,
        "seq_len": model.serving_seq_len,
        "predicted_capacity_sequences_per_second": _number(
            model.capacity.throughput_sequences_per_second
        ),
        "predicted_capacity_tokens_per_second": _number(
            model.capacity.throughput_tokens_per_second
        ),
        "predicted_max_batch_size": max_batch_size,
        "drift_ratio": _number(model.drift_ratio),
    }


def _curves_device(
    device: DeviceState, now: float, stale_after_seconds: float | None
) -> dict[str, Any]:
    timestamp = device.calibration_timestamp_seconds
    stale = not device.up or not _is_ready(device)
    if stale_after_seconds is not None and timestamp is not None:
        stale = stale or now - timestamp > stale_after_seconds
    calibration = None
    if device.history:
        latest = device.history[-1]
        calibration = {
            "compute_flops_per_second": {
                dtype: _number(rate)
                for dtype, rate in sorted(latest.compute_flops_per_second.items())
            },
            "memory_bandwidth_bytes_per_second": _number(latest.memory_bandwidth_bytes_per_second),
            "dispatch_seconds": _number(latest.dispatch_seconds),
        }
    return {
        "device": device.device,
        "modelName": device.identity.get("modelName", ""),
        "calibration_timestamp_seconds": _number(timestamp),
        "stale": stale,
        "calibration": calibration,
        "models": [_curves_model(model) for model in device.models],
    }


def _curves_model(model: ModelState) -> dict[str, Any]:
    return {
        "model": model.model,
        "dtype": model.dtype,
        "serving": {"batch_size": model.serving_batch_size, "seq_len": model.serving_seq_len},
        "mape_ratio": _number(model.mape_ratio),
        "drift_ratio": _number(model.drift_ratio),
        "points": [_curves_point(point) for point in model.points],
    }


def _predicted(figures: Figures) -> dict[str, Any]:
    return {
        "latency_seconds": _number(figures.latency_seconds),
        "throughput_sequences_per_second": _number(figures.throughput_sequences_per_second),
        "throughput_tokens_per_second": _number(figures.throughput_tokens_per_second),
        "framework_overhead_ratio": _number(figures.framework_overhead_ratio),
        "regime": figures.regime,
        "mfu_ratio": _number(figures.mfu_ratio),
    }


def _measured(point: PointRecord, measured: Measurement) -> dict[str, Any]:
    return {
        "latency_seconds": _number(measured.latency_seconds),
        "throughput_sequences_per_second": _number(point.measured_throughput_sequences_per_second),
        "framework_overhead_ratio": _number(measured.framework_overhead_ratio),
        "timestamp_seconds": _number(measured.timestamp_seconds),
    }


def _curves_point(point: PointRecord) -> dict[str, Any]:
    measured = point.measured
    return {
        "batch_size": point.batch_size,
        "seq_len": point.seq_len,
        "predicted": _predicted(point.predicted),
        "measured": None if measured is None else _measured(point, measured),
        "error_ratio": _number(point.prior_error_ratio) if measured is not None else None,
        "baseline_error_ratio": (
            _number(point.baseline_error_ratio) if measured is not None else None
        ),
    }
