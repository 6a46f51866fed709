"""One probe cycle on one device: choose points, run the worker, calibrate, score, refit, predict.

The order matters for honest drift. Each measured point is first scored against what the model
predicted *before* this cycle (``prior_error_ratio``: the previous refitted calibration, or on a
first cycle the fresh probe calibration alone) and against the pinned baseline calibration
(``baseline_error_ratio``); only then is the model refitted on the recent measurements. A device
that slows down therefore shows as a negative error even though the refit will absorb it.

A worker that fails, hangs or prints garbage leaves the device's last good calibration in place
(``up`` false for this cycle), is counted in ``probe_runs_total{probe="cycle"}`` and raises the
device's ``consecutive_failures``, from which the daemon derives its retry backoff.

Pure parts (``select_points``, ``build_request``, ``apply_result``, ``apply_failure``) take plain
values and are tested without a worker; ``run_cycle`` wires them to the supervisor.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from scaleprobe.exporter.config import Config, ModelConfig
from scaleprobe.exporter.snapshot import (
    CalibrationSample,
    DeviceState,
    Figures,
    Measurement,
    ModelState,
    PointRecord,
    empty_device_state,
)
from scaleprobe.models import fit as fit_module
from scaleprobe.models.architecture import Architecture, load_architecture, renamed
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.predict import max_batch_size, predict

log = logging.getLogger("scaleprobe.cycle")

WORKER_SCHEMA = "scaleprobe.worker/1"
# Outcome labels of probe_runs_total (docs: DESIGN.md); the supervisor's "malformed" is a failure.
_OUTCOME_LABELS = {"malformed": "failed"}


@dataclass(frozen=True)
class PlannedPoint:
    model: str
    batch_size: int
    seq_len: int


@dataclass(frozen=True)
class CycleResult:
    state: DeviceState
    outcome: str  # ok, failed, timeout, malformed (the cycle as a whole)
    reason: str = ""
    measured_points: int = 0


def load_architectures(config: Config) -> dict[str, Architecture]:
    """Each configured model's architecture, named by its ``model`` label."""
    return {m.name: renamed(load_architecture(m.source), m.name) for m in config.models}


# --- choosing the points ---------------------------------------------------------------------


def _last_measured(previous: DeviceState | None) -> dict[tuple[str, int, int], float]:
    seen: dict[tuple[str, int, int], float] = {}
    if previous is None:
        return seen
    for model in previous.models:
        for point in model.points:
            if point.measured is not None:
                key = (model.model, point.batch_size, point.seq_len)
                seen[key] = point.measured.timestamp_seconds
    return seen


def _cost_estimate(
    architecture: Architecture,
    batch_size: int,
    seq_len: int,
    dtype: str,
    params: DeviceParams | None,
) -> float:
    """Seconds if a calibration exists, else a proportional proxy (parameters x tokens)."""
    if params is not None:
        try:
            return float(predict(architecture, params, batch_size, seq_len, dtype).latency_seconds)
        except Exception:  # an odd point must not stop the choice; fall back to the proxy
            pass
    return float(architecture.parameter_count()) * batch_size * seq_len


def select_points(
    config: Config,
    previous: DeviceState | None,
    architectures: Mapping[str, Architecture],
    dtype: str,
    *,
    count: int | None = None,
) -> list[PlannedPoint]:
    """This cycle's points: the least recently measured first, cheap ones first among equals.

    Never-measured points come before measured ones, so the whole grid gets measured over a few
    cycles and then rotates. Among points that tie (on a first cycle: all of them) the order
    interleaves the models, cheapest point of each first: the first cycle measures at least one
    cheap point per model (beyond ``points_per_cycle`` if there are more models), so every
    model has a measurement early. The worker runs them in this order and skips what exceeds the
    budget; skipped points stay unmeasured and come first next time.
    """
    params = _params_of(previous)
    last = _last_measured(previous)
    if count is None:
        # every model gets a measurement early, even with fewer points per cycle than models
        unmeasured = {m.name for m in config.models} - {key[0] for key in last}
        count = max(config.points_per_cycle, len(unmeasured))
    candidates: list[tuple[float, int, int, PlannedPoint]] = []
    for model_index, model in enumerate(config.models):
        architecture = architectures[model.name]
        grid = config.grid()
        costs = [_cost_estimate(architecture, b, s, dtype, params) for b, s in grid]
        ranks = {
            point: rank
            for rank, point in enumerate(sorted(grid, key=lambda p: costs[grid.index(p)]))
        }
        for batch_size, seq_len in grid:
            key = (model.name, batch_size, seq_len)
            candidates.append(
                (
                    last.get(key, -math.inf),
                    ranks[(batch_size, seq_len)],
                    model_index,
                    PlannedPoint(model.name, batch_size, seq_len),
                )
            )
    candidates.sort(key=lambda c: c[:3])
    return [c[3] for c in candidates[:count]]


def build_request(
    config: Config,
    device: str,
    dtype: str,
    points: Sequence[PlannedPoint],
    architectures: Mapping[str, Architecture],
    *,
    calibrate: bool = True,
) -> dict[str, Any]:
    """The worker request of ``docs/internals.md``; each point carries its model's config.json."""
    return {
        "schema": WORKER_SCHEMA,
        "device": device,
        "dtype": dtype,
        "calibrate": calibrate,
        "points": [
            {
                "model": p.model,
                "config": architectures[p.model].to_config(),
                "batch_size": p.batch_size,
                "seq_len": p.seq_len,
            }
            for p in points
        ],
        "budget_seconds": config.cycle_budget_seconds,
        "memory_cap_bytes": config.memory_cap_bytes,
        "guard": {
            "max_utilization_ratio": config.max_utilization_ratio,
            "min_free_memory_bytes": config.min_free_memory_bytes,
        },
    }


# --- the models API, in one place ------------------------------------------------------------


def _params_of(state: DeviceState | None) -> DeviceParams | None:
    if state is None or state.calibration is None:
        return None
    try:
        return DeviceParams.from_dict(state.calibration)
    except Exception:
        log.warning("stored calibration unreadable; ignoring it", extra={"device": state.device})
        return None


def _figures(prediction: Any) -> Figures:
    return Figures(
        latency_seconds=float(prediction.latency_seconds),
        throughput_sequences_per_second=float(prediction.throughput_sequences_per_second),
        throughput_tokens_per_second=float(prediction.throughput_tokens_per_second),
        framework_overhead_ratio=float(prediction.framework_overhead_ratio),
        mfu_ratio=float(prediction.mfu_ratio),
        regime=str(prediction.regime),
        peak_memory_bytes=float(prediction.peak_memory_bytes),
        fits_in_memory=bool(prediction.fits_in_memory),
    )


def error_ratio(measured_latency_seconds: float, predicted_latency_seconds: float) -> float:
    """(measured − predicted) / predicted *throughput*: negative when the device is slower."""
    return predicted_latency_seconds / measured_latency_seconds - 1.0


# --- applying a worker result ----------------------------------------------------------------


def _label(outcome: str) -> str:
    return _OUTCOME_LABELS.get(outcome, outcome)


def _spread_ratio(samples: Sequence[float]) -> float | None:
    if len(samples) < 4:
        return None
    quartiles = statistics.quantiles(samples, n=4)
    median = statistics.median(samples)
    return (quartiles[2] - quartiles[0]) / median if median > 0 else None


def _bounded_history(
    history: Sequence[CalibrationSample], config: Config, now: float
) -> tuple[CalibrationSample, ...]:
    recent = [h for h in history if now - h.timestamp_seconds <= config.history_max_age_seconds]
    return tuple(recent[-config.history_max_samples :])


def apply_failure(
    previous: DeviceState | None,
    device: str,
    outcome: str,
    reason: str,
    duration_seconds: float,
    now: float,
) -> DeviceState:
    """The device after a failed cycle: last good calibration kept, ``up`` false, counted."""
    base = previous if previous is not None else empty_device_state(device)
    counts = dict(base.probe_runs_total)
    key = ("cycle", _label(outcome))
    counts[key] = counts.get(key, 0) + 1
    durations = dict(base.probe_duration_seconds)
    durations["cycle"] = duration_seconds
    return replace(
        base,
        up=False,
        probe_runs_total=counts,
        probe_duration_seconds=durations,
        last_cycle_timestamp_seconds=now,
        last_cycle_outcome=outcome,
        last_cycle_reason=reason,
        consecutive_failures=base.consecutive_failures + 1,
    )


Key = tuple[str, int, int]  # (model, batch_size, seq_len)


@dataclass(frozen=True)
class _Tally:
    """The counters after this cycle's records, and its fresh measurements."""

    counts: dict[tuple[str, str], int]
    durations: dict[str, float]
    device_seconds: float
    probes: dict[str, Mapping[str, Any]]
    fresh: dict[Key, Measurement]


def _tally(
    base: DeviceState, result: Mapping[str, Any], now: float, cycle_duration_seconds: float
) -> _Tally:
    counts = dict(base.probe_runs_total)
    durations = dict(base.probe_duration_seconds)
    device_seconds = base.probe_device_seconds_total

    def count(probe: str, outcome: str) -> None:
        key = (probe, _label(outcome))
        counts[key] = counts.get(key, 0) + 1

    probes: dict[str, Mapping[str, Any]] = {}
    for record in result.get("probes", []):
        probe = str(record["probe"])
        count(probe, str(record["outcome"]))
        durations[probe] = float(record.get("duration_seconds") or 0.0)
        device_seconds += float(record.get("device_seconds") or 0.0)
        probes[probe] = record
    model_seconds = 0.0
    fresh: dict[Key, Measurement] = {}
    for record in result.get("points", []):
        count("model", str(record["outcome"]))
        model_seconds += float(record.get("duration_seconds") or 0.0)
        device_seconds += float(record.get("device_seconds") or 0.0)
        if record["outcome"] == "ok":
            key = (str(record["model"]), int(record["batch_size"]), int(record["seq_len"]))
            fresh[key] = _measurement(record, now)
    if result.get("points"):
        durations["model"] = model_seconds
    count("cycle", "ok")
    durations["cycle"] = cycle_duration_seconds
    return _Tally(counts, durations, device_seconds, probes, fresh)


def _measurement(record: Mapping[str, Any], now: float) -> Measurement:
    latency = float(record["latency_seconds"])
    if not (latency > 0 and math.isfinite(latency)):
        raise ValueError(f"point latency_seconds {latency!r} is not a positive number")
    overhead = record.get("framework_overhead_ratio")
    peak = record.get("peak_memory_bytes")
    return Measurement(
        latency_seconds=latency,
        framework_overhead_ratio=None if overhead is None else float(overhead),
        peak_memory_bytes=None if peak is None else float(peak),
        timestamp_seconds=now,
        spread_ratio=_spread_ratio([float(s) for s in record.get("samples_seconds", [])]),
    )


def _calibrate(
    result: Mapping[str, Any],
    device: str,
    dtype: str,
    name: str,
    now: float,
    history: Sequence[CalibrationSample],
) -> tuple[DeviceParams | None, CalibrationSample | None, str]:
    """The probes' calibration, its first-touch price, measured elementwise share and small
    products' half size steadied over ``history`` (the earlier calibrations, :func:`_steady`),
    and its history sample; or None and why (compute/memory not ok)."""
    probe_results = fit_module.ProbeResults.from_records(result.get("probes", []))
    bandwidth = probe_results.memory_bandwidth_bytes_per_second
    if dtype not in probe_results.compute_flops_per_second or bandwidth is None:
        records = {str(r.get("probe")): r for r in result.get("probes", [])}
        missing = []
        for probe in ("compute", "memory"):
            record = records.get(probe, {})
            if record.get("outcome") != "ok":
                missing.append(
                    f"{probe}: {record.get('reason') or record.get('outcome', 'not run')}"
                )
        return None, None, "calibration probes did not run: " + "; ".join(missing)
    memory_bytes = result.get("device", {}).get("memory_bytes")
    gpu = device.startswith("cuda")
    price = None if gpu else probe_results.first_touch_seconds_per_byte
    # calibrate() charges the steadied price, or nothing where the allocator check found freed
    # large blocks handed back (models.fit)
    steady = replace(
        probe_results,
        first_touch_seconds_per_byte=_steady(
            price, [h.first_touch_seconds_per_byte for h in history]
        ),
    )
    params = fit_module.calibrate(
        steady,
        kind="gpu" if gpu else "cpu",
        memory_bytes=int(memory_bytes) if memory_bytes else 16 * 2**30,
        name=name,
    )
    ratio = None if gpu else fit_module.measured_elementwise_ratio(probe_results, params)
    if ratio is not None:
        earlier = [h.elementwise_bandwidth_ratio for h in history]
        params = replace(params, elementwise_bandwidth_ratio=_steady(ratio, earlier))
    half_size = params.gemm_half_size
    params = replace(params, gemm_half_size=_steady(half_size, [h.gemm_half_size for h in history]))
    sample = CalibrationSample(
        timestamp_seconds=now,
        compute_flops_per_second=dict(probe_results.compute_flops_per_second),
        memory_bandwidth_bytes_per_second=float(bandwidth),
        # the probe's own figure; calibrate() falls back to a default without one
        dispatch_seconds=float(
            probe_results.dispatch_seconds
            if probe_results.dispatch_seconds is not None
            else params.dispatch_seconds
        ),
        # the price the probe measured, also where the allocator check turns the charge off:
        # the history steadies the price, not the allocator's choice
        first_touch_seconds_per_byte=price,
        elementwise_bandwidth_ratio=ratio,
        gemm_half_size=half_size,
    )
    return params, sample, ""


# How many recent calibrations the CPU's first-touch price, its measured elementwise share and
# the small products' half size are the median of.
STEADY_SAMPLES = 5


def _steady(value: float | None, earlier: Sequence[float | None]) -> float | None:
    """The median of this calibration's figure and those of the calibrations before it
    (``earlier``, oldest first; None where one was not measured), ``STEADY_SAMPLES`` in all;
    None without a figure (a GPU, an older worker).

    One calibration's figure is not enough. The first-touch price: in a VM that hands freed
    memory back to its host (free page reporting), a probe now and then faults only memory the
    host has to back again and measures 5-12 times the usual cost (2 of 27 calibrations on a
    Firecracker guest), which would make that cycle's predictions for large activations 2-3
    times too slow; whether it is charged at all is the allocator's (``models.fit.calibrate``):
    a daemon restarted under tcmalloc charges nothing from its first calibration on. The
    elementwise share: its chain's bytes per op sit where the cache ladder falls steeply, and
    one calibration read 0.9-1.6 over repeated probes on a Xeon guest (BENCHMARKS.md). The
    small products' half size x½: one reading of one product at 16 rows, 40-76 in 323
    calibrations there and 92 once, which put a whole sweep's sequence-16 points 15-67% off
    (BENCHMARKS.md, "One odd x½").
    """
    if value is None:
        return None
    recent = [v for v in earlier[-(STEADY_SAMPLES - 1) :] if v is not None]
    return statistics.median([*recent, value])


def _for_dtype(params: DeviceParams | None, dtype: str) -> DeviceParams | None:
    """None for parameters calibrated for another dtype (the config changed): no prediction."""
    if params is None or dtype not in params.compute_flops_per_second:
        return None
    return params


def _recent_measurements(
    config: Config,
    previous_points: Mapping[Key, PointRecord],
    fresh: Mapping[Key, Measurement],
    now: float,
) -> dict[Key, Measurement]:
    """The latest measurement of every grid point, not older than the history window."""
    measurements = {
        key: point.measured
        for key, point in previous_points.items()
        if point.measured is not None
        and now - point.measured.timestamp_seconds <= config.history_max_age_seconds
    }
    measurements.update(fresh)
    grid_keys = {(m.name, b, s) for m in config.models for b, s in config.grid()}
    return {k: v for k, v in measurements.items() if k in grid_keys}


def _refit(
    params: DeviceParams,
    measurements: Mapping[Key, Measurement],
    architectures: Mapping[str, Architecture],
    dtype: str,
) -> DeviceParams:
    if not measurements:
        return params
    points = [
        fit_module.MeasuredPoint(
            model=key[0],
            batch_size=key[1],
            seq_len=key[2],
            dtype=dtype,
            latency_seconds=m.latency_seconds,
            framework_overhead_ratio=m.framework_overhead_ratio,
        )
        for key, m in sorted(measurements.items())
    ]
    return fit_module.refit(params, points, dict(architectures)).params


def _model_state(
    model: ModelConfig,
    architecture: Architecture,
    *,
    config: Config,
    dtype: str,
    params: DeviceParams,
    baseline: DeviceParams | None,
    measurements: Mapping[Key, Measurement],
    prior_errors: Mapping[Key, float],
    previous_points: Mapping[Key, PointRecord],
    previous_model: ModelState | None,
    drift_from_this_cycle: bool = True,
) -> ModelState:
    """One model's curve predicted with ``params``, its measurements, errors, drift, limits.

    ``drift_ratio`` is the median prior error of this cycle's points, but only when the prior was
    a refitted calibration (``drift_from_this_cycle``): on a first cycle the prior is the probes'
    calibration alone, whose error says how good the uncalibrated model is, not that the device
    changed, so it must not raise a drift alert.
    """
    records: list[PointRecord] = []
    for batch_size, seq_len in config.grid():
        key = (model.name, batch_size, seq_len)
        measured = measurements.get(key)
        prior_error: float | None = None
        baseline_error: float | None = None
        if measured is not None:
            old = previous_points.get(key)
            # scored when it was measured; a point not measured this cycle keeps its score
            prior_error = prior_errors.get(key, old.prior_error_ratio if old else None)
            if baseline is not None:
                pinned = predict(architecture, baseline, batch_size, seq_len, dtype)
                baseline_error = error_ratio(measured.latency_seconds, pinned.latency_seconds)
        records.append(
            PointRecord(
                batch_size=batch_size,
                seq_len=seq_len,
                predicted=_figures(predict(architecture, params, batch_size, seq_len, dtype)),
                measured=measured,
                prior_error_ratio=prior_error,
                baseline_error_ratio=baseline_error,
            )
        )
    this_cycle = [
        error
        for key, error in prior_errors.items()
        if key[0] == model.name and drift_from_this_cycle
    ]
    all_errors = [r.prior_error_ratio for r in records if r.prior_error_ratio is not None]
    drift: float | None
    if this_cycle:
        drift = statistics.median(this_cycle)
    else:
        drift = previous_model.drift_ratio if previous_model is not None else None
    serving = (model.serving_batch_size, model.serving_seq_len)
    return ModelState(
        model=model.name,
        dtype=dtype,
        serving_batch_size=serving[0],
        serving_seq_len=serving[1],
        capacity=_figures(predict(architecture, params, serving[0], serving[1], dtype)),
        points=tuple(records),
        max_batch_size={
            s: int(max_batch_size(architecture, params, s, dtype))
            for s in sorted({*config.seq_lens, serving[1]})
        },
        mape_ratio=statistics.fmean(abs(e) for e in all_errors) if all_errors else None,
        drift_ratio=drift,
    )


def apply_result(
    config: Config,
    device: str,
    previous: DeviceState | None,
    result: Mapping[str, Any],
    *,
    architectures: Mapping[str, Architecture],
    now: float,
    cycle_duration_seconds: float,
    reset_baseline: bool = False,
) -> DeviceState:
    """The device after a cycle whose worker returned ``result`` (a valid result document).

    Raises ``ValueError``/``KeyError``/``TypeError`` if the document is not usable; the caller
    treats that as a malformed result.
    """
    if result.get("schema") != WORKER_SCHEMA:
        raise ValueError(f"result schema {result.get('schema')!r}, expected {WORKER_SCHEMA}")
    dtype = config.dtype_for(device)
    base = previous if previous is not None else empty_device_state(device)
    tally = _tally(base, result, now, cycle_duration_seconds)
    identity_source = result.get("device", {})
    identity = {
        k: str(identity_source.get(k) or "") for k in ("gpu", "UUID", "modelName", "driver_version")
    }
    common: dict[str, Any] = {
        "identity": identity,
        "probe_runs_total": tally.counts,
        "probe_duration_seconds": tally.durations,
        "probe_device_seconds_total": tally.device_seconds,
        "guard": dict(result.get("guard", {})),
        "environment": dict(result.get("environment", {})),
        "last_cycle_timestamp_seconds": now,
        "last_cycle_outcome": "ok",
        "consecutive_failures": 0,
    }
    prior = _for_dtype(_params_of(previous), dtype)

    # 1. calibration from the probes (compute and memory ok), else the last good one is kept
    fresh_params, sample, reason = _calibrate(
        result, device, dtype, identity["modelName"] or device, now, base.history
    )
    calibrated = fresh_params is not None
    history = [*base.history, *([sample] if sample is not None else [])]
    start = fresh_params if fresh_params is not None else prior
    if start is None:  # never calibrated: nothing to predict with yet
        return replace(base, up=False, last_cycle_reason=reason, **common)

    # 2. score this cycle's measurements against the prediction made before the refit (on a
    #    first cycle: the probes' calibration alone)
    before = prior if prior is not None else start
    prior_errors = {
        key: error_ratio(
            m.latency_seconds,
            predict(architectures[key[0]], before, key[1], key[2], dtype).latency_seconds,
        )
        for key, m in tally.fresh.items()
        if key[0] in architectures
    }

    # 3. refit on the recent measurements of the whole grid (latest per point)
    previous_points = {
        (m.model, p.batch_size, p.seq_len): p
        for m in base.models
        if m.dtype == dtype
        for p in m.points
    }
    measurements = _recent_measurements(config, previous_points, tally.fresh, now)
    params = _refit(start, measurements, architectures, dtype) if calibrated else start

    # 4. the baseline: pinned at the first good calibration unless reset (or disabled)
    baseline = base.baseline
    if config.baseline_mode == "none":
        baseline = None
    elif calibrated and (baseline is None or reset_baseline):
        baseline = params.to_dict()
    baseline_params = _for_dtype(DeviceParams.from_dict(baseline) if baseline else None, dtype)

    # 5. predict the grid, the serving points and the memory limits with the refitted params
    previous_models = {m.model: m for m in base.models if m.dtype == dtype}
    models = tuple(
        _model_state(
            model,
            architectures[model.name],
            config=config,
            dtype=dtype,
            params=params,
            baseline=baseline_params,
            measurements=measurements,
            prior_errors=prior_errors,
            drift_from_this_cycle=prior is not None,
            previous_points=previous_points,
            previous_model=previous_models.get(model.name),
        )
        for model in config.models
    )
    return replace(
        base,
        up=calibrated,
        calibration=params.to_dict(),
        calibration_timestamp_seconds=now if calibrated else base.calibration_timestamp_seconds,
        baseline=baseline,
        history=_bounded_history(history, config, now),
        models=models,
        last_cycle_reason=reason,
        **common,
    )


# --- running a cycle -------------------------------------------------------------------------


def worker_command(config: Config) -> list[str]:
    """The worker's command line: the configured one, else this Python running the real worker;
    under ``nice -n worker.nice`` (coreutils), so that the serving workload, and the exporter's
    own scrapes, win the CPU over the probes. Without a ``nice`` program the worker runs at the
    exporter's priority (logged at each cycle)."""
    if config.worker_command:
        command = list(config.worker_command)
    else:
        command = [sys.executable, "-m", "scaleprobe.probes.worker"]
    if config.worker_nice > 0:
        nice = shutil.which("nice")
        if nice is not None:
            return [nice, "-n", str(config.worker_nice), *command]
        log.warning(
            "no 'nice' program on PATH: the worker runs at the exporter's priority",
            extra={"worker_nice": config.worker_nice},
        )
    return command


def run_cycle(
    config: Config,
    device: str,
    previous: DeviceState | None,
    *,
    architectures: Mapping[str, Architecture] | None = None,
    command: Sequence[str] | None = None,
    run_worker: Callable[..., Any] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    reset_baseline: bool = False,
    points: Sequence[PlannedPoint] | None = None,
    cancel: threading.Event | None = None,
) -> CycleResult:
    """Run one cycle on ``device`` and return its new state; never raises for a worker fault.

    ``cancel`` (set by the daemon on SIGTERM) ends a running worker; a cancelled cycle returns
    ``previous`` unchanged with outcome ``cancelled``: stopping is not a device failure.
    """
    if run_worker is None:
        from scaleprobe.exporter import supervisor

        run_worker = supervisor.run_worker
    architectures = load_architectures(config) if architectures is None else architectures
    dtype = config.dtype_for(device)
    planned = (
        list(points)
        if points is not None
        else select_points(config, previous, architectures, dtype)
    )
    request = build_request(config, device, dtype, planned, architectures)
    started = monotonic()
    log.info(
        "cycle start",
        extra={"device": device, "probe": "cycle", "points": len(planned), "dtype": dtype},
    )
    outcome = run_worker(
        request,
        command=list(command) if command is not None else worker_command(config),
        timeout_seconds=config.worker_timeout_seconds,
        on_event=on_event if on_event is not None else (lambda event: None),
        cancel=cancel,
    )
    duration = monotonic() - started
    now = clock()
    if getattr(outcome, "cancelled", False):
        log.info("cycle cancelled", extra={"device": device, "probe": "cycle"})
        base = previous if previous is not None else empty_device_state(device)
        return CycleResult(base, "cancelled", "the daemon is stopping")
    if outcome.outcome != "ok" or outcome.result is None:
        reason = _failure_reason(outcome)
        return _failed(previous, device, outcome.outcome, reason, duration, now)
    try:
        state = apply_result(
            config,
            device,
            previous,
            outcome.result,
            architectures=architectures,
            now=now,
            cycle_duration_seconds=duration,
            reset_baseline=reset_baseline,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        reason = f"unusable result document: {type(error).__name__}: {error}"
        return _failed(previous, device, "malformed", reason, duration, now)
    _log_allocator_change(previous, state, device)
    measured = sum(1 for p in outcome.result.get("points", []) if p.get("outcome") == "ok")
    log.info(
        "cycle done",
        extra={
            "device": device,
            "probe": "cycle",
            "outcome": "ok",
            "up": state.up,
            "points_measured": measured,
            "points_planned": len(planned),
            "duration_seconds": round(duration, 3),
            **({"reason": state.last_cycle_reason} if state.last_cycle_reason else {}),
        },
    )
    return CycleResult(state, "ok", state.last_cycle_reason, measured)


def _large_outputs_reused(state: DeviceState | None) -> bool | None:
    """Whether the state's calibration charges no page faults because the worker's allocator
    hands freed large blocks back (a charge of 0 beside a measured price); None without a CPU
    calibration that has the first-touch figure."""
    if state is None or state.calibration is None or not state.history:
        return None
    charged = state.calibration.get("first_touch_seconds_per_byte")
    price = state.history[-1].first_touch_seconds_per_byte
    if charged is None or price is None:
        return None
    return charged == 0.0 and price > 0


def _log_allocator_change(previous: DeviceState | None, state: DeviceState, device: str) -> None:
    """One line when the worker's allocator behaviour is first seen or changes (CPU): what the
    model charges large outputs follows it, and it is the server's only if the daemon runs with
    the server's allocator settings."""
    reused = _large_outputs_reused(state)
    if reused is None or reused == _large_outputs_reused(previous):
        return
    settings = " (run scaleprobe with the server's MALLOC_* and LD_PRELOAD settings)"
    if reused:
        log.info(
            "the probe worker's allocator hands freed large blocks back: large outputs are "
            "charged no page faults" + settings,
            extra={"device": device},
        )
        return
    # A warning: how much such an allocator faults at one point depends on its heap's history
    # (BENCHMARKS.md, "What the misses under glibc's defaults are made of")
    log.warning(
        "the probe worker's allocator maps large outputs anew: their page faults are charged, "
        "but how many a forward takes varies with the heap's history, so predictions at large "
        "batch x sequence are less certain; tcmalloc (LD_PRELOAD) or glibc's "
        "MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set high make them steadier, and "
        "faster" + settings,
        extra={"device": device},
    )


def _failure_reason(outcome: Any) -> str:
    """The supervisor's one-line message (it already quotes the last stderr line)."""
    return str(getattr(outcome, "message", "") or outcome.outcome)


def _failed(
    previous: DeviceState | None,
    device: str,
    outcome: str,
    reason: str,
    duration: float,
    now: float,
) -> CycleResult:
    state = apply_failure(previous, device, outcome, reason, duration, now)
    log.warning(
        "cycle failed; keeping the last good calibration",
        extra={
            "device": device,
            "probe": "cycle",
            "outcome": outcome,
            "reason": reason,
            "duration_seconds": round(duration, 3),
            "consecutive_failures": state.consecutive_failures,
        },
    )
    return CycleResult(state, outcome, reason)


def backoff_seconds(consecutive_failures: int, initial_seconds: float, max_seconds: float) -> float:
    """Wait before retrying a failing device: initial, doubling per further failure, capped."""
    if consecutive_failures <= 0:
        return 0.0
    return min(max_seconds, initial_seconds * 2.0 ** min(consecutive_failures - 1, 30))
