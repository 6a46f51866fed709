"""The /api/v1 documents: the shapes of docs/internals.md, values from the snapshot, valid JSON."""

from __future__ import annotations

import dataclasses
import json
import math

from sample_snapshot import CREATED_AT_SECONDS, sample_snapshot
from scaleprobe.exporter.api import capacity_document, curves_document

NOW = CREATED_AT_SECONDS + 5


def test_capacity_document_shape_and_values() -> None:
    document = capacity_document(sample_snapshot(), NOW)
    assert document["generated_at_seconds"] == NOW
    cpu, gpu = document["devices"]
    assert cpu["device"] == "cpu"
    assert cpu["modelName"] == "Test CPU"
    assert cpu["calibration_timestamp_seconds"] == CREATED_AT_SECONDS - 10
    assert cpu["ready"] is True
    bert = cpu["models"][0]
    assert bert == {
        "model": "bert-base",
        "dtype": "float32",
        "batch_size": 8,
        "seq_len": 128,
        "predicted_capacity_sequences_per_second": 10.0,
        "predicted_capacity_tokens_per_second": 1280.0,
        "predicted_max_batch_size": 512,
        "drift_ratio": -0.1,
    }
    assert cpu["models"][1]["drift_ratio"] is None
    # a device whose first cycle failed is listed, not ready, with no figures to act on
    assert gpu == {
        "device": "cuda:0",
        "modelName": "NVIDIA A100-SXM4-80GB",
        "calibration_timestamp_seconds": None,
        "ready": False,
        "models": [],
    }


def test_curves_document_shape_and_values() -> None:
    document = curves_document(sample_snapshot(), NOW)
    cpu = document["devices"][0]
    assert set(cpu) == {
        "device",
        "modelName",
        "calibration_timestamp_seconds",
        "stale",
        "calibration",
        "models",
    }
    assert cpu["stale"] is False
    assert cpu["calibration"] == {
        "compute_flops_per_second": {"float32": 1.9e11},
        "memory_bandwidth_bytes_per_second": 1.2e10,
        "dispatch_seconds": 5e-6,
    }
    bert = cpu["models"][0]
    assert bert["serving"] == {"batch_size": 8, "seq_len": 128}
    assert bert["mape_ratio"] == 0.1
    assert [(p["batch_size"], p["seq_len"]) for p in bert["points"]] == [
        (1, 128),
        (8, 128),
        (1, 512),
        (8, 512),
    ]
    measured, unmeasured = bert["points"][0], bert["points"][1]
    assert measured["predicted"] == {
        "latency_seconds": 0.2,
        "throughput_sequences_per_second": 5.0,
        "throughput_tokens_per_second": 640.0,
        "framework_overhead_ratio": 0.5,
        "regime": "framework",
        "mfu_ratio": 0.5,
    }
    assert measured["measured"] == {
        "latency_seconds": 0.25,
        "throughput_sequences_per_second": 4.0,
        "framework_overhead_ratio": 0.4,
        "timestamp_seconds": CREATED_AT_SECONDS - 60,
    }
    assert measured["error_ratio"] == -0.2
    assert measured["baseline_error_ratio"] == -0.1
    assert bert["drift_ratio"] == -0.1
    assert unmeasured["measured"] is None
    assert unmeasured["error_ratio"] is None
    gpu = document["devices"][1]
    assert gpu["stale"] is True
    assert gpu["calibration"] is None


def test_staleness_by_age() -> None:
    snapshot = sample_snapshot()
    fresh = curves_document(snapshot, NOW, stale_after_seconds=3600)
    old = curves_document(snapshot, NOW + 7200, stale_after_seconds=3600)
    assert fresh["devices"][0]["stale"] is False
    assert old["devices"][0]["stale"] is True


def test_no_snapshot_yet() -> None:
    assert capacity_document(None, NOW) == {"generated_at_seconds": NOW, "devices": []}
    assert curves_document(None, NOW) == {"generated_at_seconds": NOW, "devices": []}


def test_non_finite_numbers_become_null_so_the_json_stays_valid() -> None:
    snapshot = sample_snapshot()
    cpu = snapshot.devices[0]
    bert = cpu.models[0]
    capacity = dataclasses.replace(bert.capacity, throughput_sequences_per_second=math.inf)
    broken_model = dataclasses.replace(bert, capacity=capacity, mape_ratio=math.nan)
    broken = dataclasses.replace(
        snapshot, devices=(dataclasses.replace(cpu, models=(broken_model,)),)
    )
    for document in (capacity_document(broken, NOW), curves_document(broken, NOW)):
        text = json.dumps(document, allow_nan=False)  # raises on NaN/inf
        assert json.loads(text) == document
    assert (
        capacity_document(broken, NOW)["devices"][0]["models"][0][
            "predicted_capacity_sequences_per_second"
        ]
        is None
    )
