"""The probe cycle: point rotation, the worker request, drift a refit cannot hide, failures.

Most tests drive the real supervisor with ``tests/fake_worker.py`` (an injected command); one runs
the real probe worker on a tiny model.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scaleprobe.exporter.config import Config, ModelConfig, default_config
from scaleprobe.exporter.cycle import (
    CycleResult,
    _calibrate,
    apply_result,
    backoff_seconds,
    build_request,
    load_architectures,
    run_cycle,
    select_points,
)
from scaleprobe.exporter.snapshot import (
    CalibrationSample,
    DeviceState,
    _device_from_dict,
    _device_to_dict,
)
from scaleprobe.models.architecture import load_architecture
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.fit import DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO

from tests import fake_worker

FAKE_WORKER = str(Path(__file__).with_name("fake_worker.py"))


def fake(*args: str) -> list[str]:
    return [sys.executable, FAKE_WORKER, *args]


@pytest.fixture(scope="module")
def config() -> Config:
    """The CPU defaults on a 2 x 2 grid (12 points: the grid is covered in 3 cycles)."""
    return replace(default_config(devices=("cpu",)), batch_sizes=(1, 4), seq_lens=(32, 128))


@pytest.fixture(scope="module")
def architectures(config: Config) -> dict:
    return load_architectures(config)


def cycles(
    config: Config, count: int, *args: str, previous: DeviceState | None = None
) -> CycleResult:
    result = None
    for _ in range(count):
        result = run_cycle(config, "cpu", previous, command=fake(*args))
        previous = result.state
    assert result is not None
    return result


def test_first_cycle_measures_the_cheapest_point_of_every_model(
    config: Config, architectures: dict
) -> None:
    points = select_points(config, None, architectures, "float32")
    assert len(points) == config.points_per_cycle
    first_three = points[:3]
    assert [p.model for p in first_three] == [m.name for m in config.models]
    smallest = (min(config.batch_sizes), min(config.seq_lens))
    assert all((p.batch_size, p.seq_len) == smallest for p in first_three)


def test_every_model_is_measured_first_even_with_fewer_points_than_models(
    config: Config, architectures: dict
) -> None:
    few = replace(config, points_per_cycle=1)
    points = select_points(few, None, architectures, "float32")
    assert sorted(p.model for p in points) == sorted(m.name for m in config.models)
    state = cycles(few, 1).state
    assert len(select_points(few, state, architectures, "float32")) == 1


def test_rotation_covers_the_whole_grid_then_repeats_the_oldest(config: Config) -> None:
    grid_size = len(config.models) * len(config.grid())
    needed = math.ceil(grid_size / config.points_per_cycle)
    state = cycles(config, needed).state
    measured = [p for m in state.models for p in m.points if p.measured is not None]
    assert len(measured) == grid_size
    oldest = min(p.measured.timestamp_seconds for p in measured if p.measured)
    following = select_points(config, state, load_architectures(config), "float32")
    first = following[0]
    model = next(m for m in state.models if m.model == first.model)
    point = next(
        p for p in model.points if (p.batch_size, p.seq_len) == (first.batch_size, first.seq_len)
    )
    assert point.measured is not None and point.measured.timestamp_seconds == oldest


def test_request_follows_the_worker_protocol(config: Config, architectures: dict) -> None:
    points = select_points(config, None, architectures, "float32", count=2)
    request = build_request(config, "cpu", "float32", points, architectures)
    assert request["schema"] == "scaleprobe.worker/1"
    assert request["calibrate"] is True
    assert request["budget_seconds"] == config.cycle_budget_seconds
    assert request["memory_cap_bytes"] == config.memory_cap_bytes
    assert request["guard"]["max_utilization_ratio"] == config.max_utilization_ratio
    first = request["points"][0]
    assert first["config"] == load_architecture(first["model"]).to_config()
    json.dumps(request)  # plain JSON


def test_a_cycle_with_the_fake_worker_builds_a_full_device_state(
    config: Config, tmp_path: Path
) -> None:
    record = tmp_path / "request.json"
    events: list[dict] = []
    result = run_cycle(
        config, "cpu", None, command=fake("--record", str(record)), on_event=events.append
    )
    assert result.outcome == "ok" and result.measured_points == config.points_per_cycle
    state = result.state
    assert state.up and state.calibration is not None
    assert state.identity["modelName"] == "Fake CPU"
    assert [m.model for m in state.models] == [m.name for m in config.models]
    for model in state.models:
        assert len(model.points) == len(config.grid())
        assert model.capacity.throughput_sequences_per_second > 0
        assert set(model.max_batch_size) >= set(config.seq_lens)
        assert all(v > 0 for v in model.max_batch_size.values())
    assert state.probe_runs_total[("cycle", "ok")] == 1
    assert state.probe_runs_total[("model", "ok")] == config.points_per_cycle
    assert state.probe_runs_total[("compute", "ok")] == 1
    assert len(state.history) == 1
    assert state.baseline == state.calibration  # the first good calibration is pinned
    # the first cycle's points are scored against the probes' calibration, but that is not drift
    assert all(
        p.prior_error_ratio is not None for m in state.models for p in m.points if p.measured
    )
    assert all(m.drift_ratio is None for m in state.models)
    sent = json.loads(record.read_text())
    assert len(sent["points"]) == config.points_per_cycle
    assert [e["done"] for e in events] == list(range(1, config.points_per_cycle + 1))


def test_a_slower_device_shows_as_drift_despite_the_refit(config: Config) -> None:
    steady = cycles(config, 3).state
    slow = run_cycle(config, "cpu", steady, command=fake("--slowdown", "2")).state
    fresh = [
        p
        for m in slow.models
        for p in m.points
        if p.measured is not None
        and p.measured.timestamp_seconds == slow.last_cycle_timestamp_seconds
    ]
    assert len(fresh) == config.points_per_cycle
    # half the throughput: (measured - predicted) / predicted near -0.5 against the prior, and
    # as far or further below the baseline (the first cycle's refit on its 5 points moved only
    # the rate and the host cost, and the fake device's cost, linear in tokens, does not follow
    # the model's GEMM curve: that baseline reads these points about 30% fast)...
    for point in fresh:
        assert point.prior_error_ratio == pytest.approx(-0.5, abs=0.15)
        assert -0.75 < point.baseline_error_ratio < -0.45
    drifts = [m.drift_ratio for m in slow.models if m.drift_ratio is not None]
    assert drifts and all(d < -0.3 for d in drifts)
    # ...and the calibration history shows the fall against the device's own past
    assert slow.history[-1].compute_flops_per_second["float32"] == pytest.approx(
        steady.history[-1].compute_flops_per_second["float32"] / 2
    )
    assert slow.baseline == steady.baseline  # the baseline stays pinned
    # the steady cycles before had small prior errors: the drift is the slowdown, not noise
    assert all(abs(m.drift_ratio or 0) < 0.15 for m in steady.models)


def test_one_slow_first_touch_figure_is_outvoted_by_the_recent_calibrations(
    config: Config,
) -> None:
    """A VM may hand a probe only memory its host took back (12x the usual fault cost here): the
    cycle uses the median of the last calibrations' figures, and the history keeps each one."""
    steady = cycles(config, 2, "--first-touch", "2.5e-10").state
    assert steady.calibration is not None
    assert steady.calibration["first_touch_seconds_per_byte"] == pytest.approx(2.5e-10, rel=0.3)
    outlier = run_cycle(config, "cpu", steady, command=fake("--first-touch", "3e-9")).state
    assert outlier.history[-1].first_touch_seconds_per_byte == pytest.approx(3e-9)
    assert outlier.calibration is not None
    # median of (2.5e-10, 2.5e-10, 3e-9), then the refit's multiplier (its prior keeps it near)
    assert outlier.calibration["first_touch_seconds_per_byte"] < 5e-10
    # a lasting change wins once it is the majority of the last five
    later = cycles(config, 2, "--first-touch", "3e-9", previous=outlier).state
    assert later.calibration is not None
    assert later.calibration["first_touch_seconds_per_byte"] > 1.5e-9
    # and the history survives the state file
    loaded = _device_from_dict(json.loads(json.dumps(_device_to_dict(later))))
    assert [h.first_touch_seconds_per_byte for h in loaded.history][-3:] == pytest.approx(
        [3e-9, 3e-9, 3e-9]
    )


def test_an_allocator_that_hands_large_blocks_back_stops_the_fault_charge_at_once(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarted under tcmalloc (the worker's allocator check reads no refault), the daemon
    charges no first touch from that cycle on, not once the median of five turns; the history
    keeps the price the probe measured, so back under glibc's defaults the charge returns as
    that median. Each change of the allocator's behaviour is logged once."""
    caplog.set_level(logging.INFO, logger="scaleprobe.cycle")

    def allocator_lines() -> list[str]:
        """The allocator lines since the last call: a warning where large outputs fault (what
        the user can change), else information."""
        records = [r for r in caplog.records if "allocator" in r.getMessage()]
        caplog.clear()
        for record in records:
            anew = "maps large outputs anew" in record.getMessage()
            assert record.levelno == (logging.WARNING if anew else logging.INFO)
        return [r.getMessage() for r in records]

    steady = cycles(config, 3, "--first-touch", "2.5e-10").state
    first = allocator_lines()
    assert len(first) == 1 and "maps large outputs anew" in first[0]
    assert "tcmalloc" in first[0] and "MALLOC_MMAP_THRESHOLD_" in first[0]
    assert steady.calibration is not None
    assert steady.calibration["first_touch_seconds_per_byte"] > 1e-10
    reused = run_cycle(
        config,
        "cpu",
        steady,
        command=fake("--first-touch", "2.5e-10", "--large-outputs-reused"),
    ).state
    assert reused.calibration is not None
    assert reused.calibration["first_touch_seconds_per_byte"] == 0.0
    assert reused.history[-1].first_touch_seconds_per_byte == pytest.approx(2.5e-10)
    switched = allocator_lines()
    assert len(switched) == 1 and "hands freed large blocks back" in switched[0]
    assert "LD_PRELOAD" in switched[0]
    back = run_cycle(config, "cpu", reused, command=fake("--first-touch", "2.5e-10")).state
    assert back.calibration is not None
    assert back.calibration["first_touch_seconds_per_byte"] == pytest.approx(2.5e-10, rel=0.3)
    assert ["maps large outputs anew" in line for line in allocator_lines()] == [True]


def calibrate_fake(
    history: tuple[CalibrationSample, ...], **readings: Any
) -> tuple[DeviceParams, CalibrationSample]:
    """One CPU calibration from the fake worker's probe records (first touch 2.5e-10 s/B and
    ``readings``, fake_worker.result_document's options) over ``history``."""
    document = fake_worker.result_document(
        {"dtype": "float32", "calibrate": True, "points": []},
        1.0,
        False,
        first_touch=2.5e-10,
        **readings,
    )
    params, sample, why = _calibrate(document, "cpu", "float32", "cpu", 0.0, history)
    assert params is not None and sample is not None, why
    return params, sample


def test_one_odd_elementwise_share_is_outvoted_by_the_recent_calibrations(
    config: Config,
) -> None:
    """Where the probes measure ρ (an allocator that hands large blocks back), a calibration
    takes the median of its reading and the last ones, as for the first-touch price, before any
    refit; the history keeps each reading, also through the state file; under glibc's defaults
    nothing is read, the default stands and the history says so (None)."""

    def calibrated(
        ratio: float, history: tuple[CalibrationSample, ...], reused: bool = True
    ) -> tuple[DeviceParams, CalibrationSample]:
        return calibrate_fake(history, large_outputs_reused=reused, elementwise_ratio=ratio)

    history: tuple[CalibrationSample, ...] = ()
    for ratio in (1.0, 1.0):
        params, sample = calibrated(ratio, history)
        history = (*history, sample)
    assert params.elementwise_bandwidth_ratio == pytest.approx(1.0)
    odd, sample = calibrated(1.9, history)
    assert sample.elementwise_bandwidth_ratio == pytest.approx(1.9)  # kept as read
    assert odd.elementwise_bandwidth_ratio == pytest.approx(1.0)  # median of 1.0, 1.0, 1.9
    history = (*history, sample)
    for _ in range(2):  # a lasting change wins once it is the majority of the last five
        params, sample = calibrated(1.9, history)
        history = (*history, sample)
    assert params.elementwise_bandwidth_ratio == pytest.approx(1.9)
    glibc, sample = calibrated(1.9, history, reused=False)
    assert sample.elementwise_bandwidth_ratio is None
    assert glibc.elementwise_bandwidth_ratio == DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO
    # the cycle keeps the readings in the state file
    state = cycles(config, 2, "--first-touch", "2.5e-10", "--large-outputs-reused",
                   "--elementwise-ratio", "1.3").state  # fmt: skip
    loaded = _device_from_dict(json.loads(json.dumps(_device_to_dict(state))))
    assert [h.elementwise_bandwidth_ratio for h in loaded.history] == pytest.approx([1.3, 1.3])


def test_one_odd_small_product_reading_is_outvoted_by_the_recent_calibrations(
    config: Config,
) -> None:
    """x½ comes from one reading of a 16-row product: a calibration takes the median of its x½
    and the last ones' (one odd reading put a whole sweep's sequence-16 points 15-67% off),
    while the history keeps each reading, also through the state file; a lasting change wins."""
    peak = fake_worker.COMPUTE_FLOPS_PER_SECOND

    def calibrated(
        half_size: float, history: tuple[CalibrationSample, ...]
    ) -> tuple[DeviceParams, CalibrationSample]:
        return calibrate_fake(history, streamed_rate=peak / (1 + half_size / 16))

    history: tuple[CalibrationSample, ...] = ()
    for half_size in (52.0, 50.0):
        params, sample = calibrated(half_size, history)
        history = (*history, sample)
    assert params.gemm_half_size == pytest.approx(51.0)  # median of 52 and 50
    odd, sample = calibrated(92.0, history)
    assert sample.gemm_half_size == pytest.approx(92.0)  # kept as read
    assert odd.gemm_half_size == pytest.approx(52.0)  # median of 52, 50, 92
    history = (*history, sample)
    for _ in range(2):
        params, sample = calibrated(92.0, history)
        history = (*history, sample)
    assert params.gemm_half_size == pytest.approx(92.0)  # 52, 50, 92, 92, 92
    loaded = _device_from_dict(
        json.loads(json.dumps(_device_to_dict(replace(cycles(config, 1).state, history=history))))
    )
    assert [h.gemm_half_size for h in loaded.history] == pytest.approx([52, 50, 92, 92, 92])
    # a state file written before the field loads without it
    older = _device_to_dict(loaded)
    for h in older["history"]:
        del h["gemm_half_size"]
    assert _device_from_dict(older).history[0].gemm_half_size is None


def test_baseline_reset_pins_the_new_calibration(config: Config) -> None:
    steady = cycles(config, 2).state
    slow = run_cycle(
        config, "cpu", steady, command=fake("--slowdown", "2"), reset_baseline=True
    ).state
    assert slow.baseline != steady.baseline
    assert slow.baseline == slow.calibration
    none = run_cycle(replace(config, baseline_mode="none"), "cpu", steady, command=fake()).state
    assert none.baseline is None
    assert all(p.baseline_error_ratio is None for m in none.models for p in m.points)


@pytest.mark.parametrize(
    ("mode", "outcome", "label"),
    [
        ("fail", "failed", "failed"),
        ("crash", "failed", "failed"),
        ("garbage", "malformed", "failed"),
        ("wrong-schema", "malformed", "failed"),
        ("hang", "timeout", "timeout"),
    ],
)
def test_a_failing_worker_keeps_the_last_good_calibration(
    config: Config, mode: str, outcome: str, label: str
) -> None:
    good = cycles(config, 1).state
    quick = replace(config, worker_timeout_seconds=1.0)
    result = run_cycle(quick, "cpu", good, command=fake("--mode", mode))
    assert result.outcome == outcome
    assert result.reason
    state = result.state
    assert not state.up
    assert state.calibration == good.calibration
    assert state.models == good.models
    assert state.probe_runs_total[("cycle", label)] == 1
    assert state.consecutive_failures == 1
    again = run_cycle(quick, "cpu", state, command=fake("--mode", mode)).state
    assert again.consecutive_failures == 2
    recovered = run_cycle(config, "cpu", again, command=fake()).state
    assert recovered.up and recovered.consecutive_failures == 0


def test_a_first_cycle_that_fails_has_no_calibration(config: Config) -> None:
    state = run_cycle(config, "cpu", None, command=fake("--mode", "fail")).state
    assert not state.up and state.calibration is None and state.models == ()


def test_skipped_calibration_probes_keep_the_calibration_but_score_the_points(
    config: Config,
) -> None:
    good = cycles(config, 2).state
    busy = run_cycle(config, "cpu", good, command=fake("--skip-calibration")).state
    assert not busy.up
    assert "calibration probes did not run" in busy.last_cycle_reason
    assert busy.calibration == good.calibration
    assert busy.probe_runs_total[("compute", "skipped_busy")] == 1
    assert len(busy.history) == len(good.history)
    fresh = [
        p
        for m in busy.models
        for p in m.points
        if p.measured is not None
        and p.measured.timestamp_seconds == busy.last_cycle_timestamp_seconds
    ]
    assert fresh and all(p.prior_error_ratio is not None for p in fresh)


def test_a_result_with_a_bad_latency_is_malformed(config: Config, architectures: dict) -> None:
    from fake_worker import result_document

    request = build_request(
        config,
        "cpu",
        "float32",
        select_points(config, None, architectures, "float32"),
        architectures,
    )
    document = result_document(request, 1.0, False)
    document["points"][0]["latency_seconds"] = -1.0
    with pytest.raises(ValueError, match="latency"):
        apply_result(
            config,
            "cpu",
            None,
            document,
            architectures=architectures,
            now=1.0,
            cycle_duration_seconds=0.1,
        )


def test_history_is_bounded_by_count_and_age(config: Config) -> None:
    small = replace(config, history_max_samples=2)
    state = cycles(small, 3).state
    assert len(state.history) == 2
    aged = replace(config, history_max_age_seconds=1e-9)
    assert len(cycles(aged, 2).state.history) == 1


def test_backoff_doubles_and_is_capped() -> None:
    assert backoff_seconds(0, 60, 600) == 0
    assert [backoff_seconds(n, 60, 600) for n in (1, 2, 3, 4, 5)] == [60, 120, 240, 480, 600]
    assert backoff_seconds(10_000, 60, 600) == 600


def test_a_real_worker_cycle_on_a_tiny_model(tmp_path: Path) -> None:
    """The real probe worker (torch) end to end, on a 2-layer hidden-64 BERT: about 10 s."""
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 1000,
                "max_position_embeddings": 128,
            }
        )
    )
    tiny = replace(
        default_config(devices=("cpu",)),
        models=(ModelConfig("tiny", str(model_dir), 2, 16),),
        batch_sizes=(1, 2),
        seq_lens=(8, 16),
        points_per_cycle=2,
        cycle_budget_seconds=60.0,  # the probes count too, and the machine may be busy
        worker_timeout_seconds=180.0,
        max_utilization_ratio=1.0,  # never skip for load: this is not the guard's test
    )
    result = run_cycle(tiny, "cpu", None)
    assert result.outcome == "ok", result.reason
    state = result.state
    assert state.up
    assert state.environment.get("torch_version", "").startswith("2.")
    assert state.history[0].compute_flops_per_second["float32"] > 1e9
    measured = [p for p in state.models[0].points if p.measured is not None]
    assert len(measured) == 2
    assert all(p.prior_error_ratio is not None for p in measured)
    assert all(0 < p.predicted.latency_seconds < 1 for p in state.models[0].points)
