"""The Prometheus collector: renders the latest snapshot at scrape time.

A scrape never runs a probe and never fails because of the snapshot. ``SnapshotCollector`` asks
for the latest immutable ``Snapshot`` at every scrape and builds fresh metric families from it
(nothing shared is mutated, so concurrent scrapes are safe). Probes run on their own timer in the
probe worker; the values here are as old as the last cycle, and the exposition says how old
(``scaleprobe_snapshot_age_seconds``, ``scaleprobe_last_calibration_timestamp_seconds``).

If rendering fails (a bug, an odd snapshot), the scrape still succeeds: it carries
``scaleprobe_collector_success 0`` and the error is logged, as node_exporter does for its
collectors. Cardinality is bounded by the snapshot, which holds only the configured grid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from scaleprobe.exporter.snapshot import (
    CalibrationSample,
    DeviceState,
    ModelState,
    PointRecord,
    Snapshot,
)

log = logging.getLogger(__name__)

# Outcomes that every probe's counter exposes (zero until they happen), so that rate() and
# absent() work from the first scrape; outcomes the snapshot holds beyond these are added.
PROBE_OUTCOMES = ("ok", "failed", "timeout", "skipped_busy", "skipped_memory")
PROBES = ("compute", "memory", "dispatch", "model")

SCHEDULE_NOTE = (
    " Probes run on their own schedule in a separate worker, not at scrape time, "
    "so this value can be minutes old (see scaleprobe_last_calibration_timestamp_seconds)."
)
PREDICTED_NOTE = (
    " Predicted by the performance model as refitted after the latest probe cycle "
    "(not computed at scrape time)."
)
PRIOR_NOTE = (
    " The prediction is the one made before the refit that used this measurement, so a device "
    "that slows down shows here instead of being absorbed by the next refit."
)

POINT = ("device", "model", "dtype", "batch_size", "seq_len")
MODEL = ("device", "model", "dtype")


@dataclass(frozen=True)
class MetricSpec:
    """One metric family of the exposition: its name, type, labels and HELP text."""

    name: str
    kind: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    help: str


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "scaleprobe_build_info",
        "gauge",
        ("version", "torch_version", "transformers_version"),
        "Always 1: the scaleprobe version, and the torch and transformers versions the probe "
        "worker reported (empty until the first cycle).",
    ),
    MetricSpec(
        "scaleprobe_snapshot_timestamp_seconds",
        "gauge",
        (),
        "Unix time at which the snapshot being served was built (after the latest probe cycle).",
    ),
    MetricSpec(
        "scaleprobe_snapshot_age_seconds",
        "gauge",
        (),
        "Seconds since the snapshot being served was built; grows while cycles fail or hang.",
    ),
    MetricSpec(
        "scaleprobe_device_info",
        "gauge",
        ("device", "gpu", "UUID", "modelName", "driver_version"),
        "Always 1: identity of a probed device, labelled like dcgm-exporter (gpu, UUID, "
        "modelName) so its series join with that exporter's.",
    ),
    MetricSpec(
        "scaleprobe_up",
        "gauge",
        ("device",),
        "1 if the device's last probe cycle produced a calibration, 0 if it failed, timed out or "
        "was skipped (the last good calibration keeps being served).",
    ),
    MetricSpec(
        "scaleprobe_last_calibration_timestamp_seconds",
        "gauge",
        ("device",),
        "Unix time of the calibration being served; alert on time() minus this to catch staleness.",
    ),
    MetricSpec(
        "scaleprobe_last_cycle_timestamp_seconds",
        "gauge",
        ("device",),
        "Unix time at which the device's last probe cycle ended, whatever its outcome.",
    ),
    MetricSpec(
        "scaleprobe_cycle_consecutive_failures",
        "gauge",
        ("device",),
        "Probe cycles of the device that failed in a row (0 after a good one); the daemon backs "
        "off its retries as this grows.",
    ),
    MetricSpec(
        "scaleprobe_guard_checked",
        "gauge",
        ("device",),
        "1 if the probe worker's guard read the device's load and free memory before the latest "
        "cycle's probes (NVML on a GPU; on the CPU, the other processes' share of the cores and "
        "MemAvailable from /proc); 0 if it could not (NVML missing or failing): the probes then "
        "ran without that politeness check.",
    ),
    MetricSpec(
        "scaleprobe_probe_compute_flops_per_second",
        "gauge",
        ("device", "dtype"),
        "Matrix-multiply rate the compute probe measured, in floating-point operations per "
        "second." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_probe_memory_bandwidth_bytes_per_second",
        "gauge",
        ("device",),
        "Device copy bandwidth the memory probe measured, in bytes per second." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_probe_dispatch_seconds",
        "gauge",
        ("device",),
        "Host-side cost of dispatching one framework op, in seconds, as the dispatch probe "
        "measured it." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_calibration_change_ratio",
        "gauge",
        ("device", "parameter"),
        "(latest - median of the earlier calibrations) / that median, per calibrated parameter, "
        "over the device's retained calibration history: a fall of compute_flops_per_second_* or "
        "memory_bandwidth_bytes_per_second, or a rise of dispatch_seconds, means the device got "
        "slower than its own past (throttling, a noisy neighbour). 0 with a single calibration."
        + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_calibration_history_samples",
        "gauge",
        ("device",),
        "Number of calibrations in the device's retained history "
        "(the reference of scaleprobe_calibration_change_ratio).",
    ),
    MetricSpec(
        "scaleprobe_measured_throughput_sequences_per_second",
        "gauge",
        POINT,
        "Forward-pass throughput measured at this grid point (batch_size / median latency), "
        "in sequences per second." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_predicted_throughput_sequences_per_second",
        "gauge",
        POINT,
        "Forward-pass throughput at this grid point, in sequences per second." + PREDICTED_NOTE,
    ),
    MetricSpec(
        "scaleprobe_measured_latency_seconds",
        "gauge",
        POINT,
        "Median forward-pass latency measured at this grid point, in seconds." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_predicted_latency_seconds",
        "gauge",
        POINT,
        "Forward-pass latency at this grid point, in seconds." + PREDICTED_NOTE,
    ),
    MetricSpec(
        "scaleprobe_measured_timestamp_seconds",
        "gauge",
        POINT,
        "Unix time at which this grid point was last measured (points are measured in rotation, "
        "a few per cycle).",
    ),
    MetricSpec(
        "scaleprobe_measured_framework_overhead_ratio",
        "gauge",
        POINT,
        "Share (0..1) of the measured forward time the device sat idle waiting on the host "
        "(framework dispatch)." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_predicted_framework_overhead_ratio",
        "gauge",
        POINT,
        "Share (0..1) of the forward time the device waits on the host (framework dispatch)."
        + PREDICTED_NOTE,
    ),
    MetricSpec(
        "scaleprobe_prediction_error_ratio",
        "gauge",
        POINT,
        "(measured - predicted) / predicted throughput at this grid point: negative when the "
        "device is slower than predicted." + PRIOR_NOTE + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_baseline_error_ratio",
        "gauge",
        POINT,
        "(measured - predicted) / predicted throughput at this grid point, the prediction made "
        "from the pinned baseline calibration (the first good one unless an operator reset "
        "it): the device's slow-down since its baseline." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_measured_model_flops_utilization_ratio",
        "gauge",
        POINT,
        "Model-FLOPs utilisation (0..1) of the measured forward pass: the model's FLOPs over the "
        "measured latency, against the device's calibrated compute rate." + SCHEDULE_NOTE,
    ),
    MetricSpec(
        "scaleprobe_prediction_mape_ratio",
        "gauge",
        MODEL,
        "Mean absolute prediction error (0..1) of throughput over the model's measured grid "
        "points (each point's latest measurement)." + PRIOR_NOTE,
    ),
    MetricSpec(
        "scaleprobe_drift_ratio",
        "gauge",
        MODEL,
        "Median (measured - predicted) / predicted throughput over the points measured in the "
        "model's latest cycle: negative means the device delivers less than the model predicted."
        + PRIOR_NOTE,
    ),
    MetricSpec(
        "scaleprobe_serving_point_info",
        "gauge",
        ("device", "model", "dtype", "batch_size", "seq_len"),
        "Always 1: the configured serving point (batch size, sequence length) at which "
        "scaleprobe_predicted_capacity_* is predicted.",
    ),
    MetricSpec(
        "scaleprobe_predicted_capacity_sequences_per_second",
        "gauge",
        MODEL,
        "Throughput at the model's serving point, in sequences per second, for autoscalers."
        + PREDICTED_NOTE,
    ),
    MetricSpec(
        "scaleprobe_predicted_capacity_tokens_per_second",
        "gauge",
        MODEL,
        "Throughput at the model's serving point, in tokens per second, for autoscalers."
        + PREDICTED_NOTE,
    ),
    MetricSpec(
        "scaleprobe_predicted_max_batch_size",
        "gauge",
        ("device", "model", "dtype", "seq_len"),
        "Largest batch size whose forward pass fits in the device's memory at this sequence "
        "length." + PREDICTED_NOTE,
    ),
    MetricSpec(
        "scaleprobe_probe_runs_total",
        "counter",
        ("device", "probe", "outcome"),
        "Probe runs by outcome (ok, failed, timeout, skipped_busy, skipped_memory, ...), "
        "cumulative across daemon restarts.",
    ),
    MetricSpec(
        "scaleprobe_probe_duration_seconds",
        "gauge",
        ("device", "probe"),
        "Wall-clock duration of the probe's last run, in seconds.",
    ),
    MetricSpec(
        "scaleprobe_probe_device_seconds_total",
        "counter",
        ("device",),
        "Device time the probes have taken from the serving workload, in seconds, cumulative "
        "across daemon restarts.",
    ),
    MetricSpec(
        "scaleprobe_state_write_errors_total",
        "counter",
        (),
        "Times the state file could not be written (read-only or full disk); the daemon keeps "
        "serving, but a restart would lose the calibrations since the last good write.",
    ),
)

SUCCESS = MetricSpec(
    "scaleprobe_collector_success",
    "gauge",
    (),
    "1 if this scrape rendered the snapshot, 0 if rendering failed (the error is logged; the "
    "other series of this scrape may be incomplete).",
)


AGE = next(spec for spec in SPECS if spec.name == "scaleprobe_snapshot_age_seconds")


def package_version() -> str:
    """The installed scaleprobe version, or "unknown" when running from an uninstalled tree."""
    try:
        return metadata.version("scaleprobe")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Families:
    """Fresh metric families for one scrape, in the fixed order of ``SPECS``."""

    def __init__(self, specs: Sequence[MetricSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._families: dict[str, Metric] = {}
        for spec in specs:
            if spec.kind == "counter":
                self._families[spec.name] = CounterMetricFamily(
                    spec.name, spec.help, labels=spec.labels
                )
            else:
                self._families[spec.name] = GaugeMetricFamily(
                    spec.name, spec.help, labels=spec.labels
                )

    def add(self, name: str, labels: Sequence[object], value: float | None) -> None:
        """Add one sample; a missing or non-finite value is left out rather than exported."""
        if value is None or not math.isfinite(value):
            return
        family = self._families[name]
        assert isinstance(family, GaugeMetricFamily | CounterMetricFamily)
        if len(labels) != len(self._specs[name].labels):
            raise ValueError(f"{name}: {len(labels)} label values for {self._specs[name].labels}")
        family.add_metric([str(label) for label in labels], float(value))

    def nonempty(self) -> list[Metric]:
        return [family for family in self._families.values() if family.samples]


class SnapshotCollector(Collector):
    """Builds the exposition from the latest snapshot at every scrape.

    ``get_snapshot`` returns the snapshot being served (``None`` before the first cycle and with no
    state file); ``clock`` gives the Unix time for ``scaleprobe_snapshot_age_seconds``; ``version``
    overrides the installed package version (tests pin it). A sample of what it yields::

        # HELP scaleprobe_up 1 if the device's last probe cycle produced a calibration, ...
        # TYPE scaleprobe_up gauge
        scaleprobe_up{device="cpu"} 1.0
        scaleprobe_probe_compute_flops_per_second{device="cpu",dtype="float32"} 1.9e+11
        scaleprobe_measured_throughput_sequences_per_second{batch_size="4",device="cpu",\
dtype="float32",model="bert-base",seq_len="128"} 7.2
        scaleprobe_predicted_capacity_sequences_per_second{device="cpu",dtype="float32",\
model="bert-base"} 14.1
        scaleprobe_probe_runs_total{device="cpu",outcome="ok",probe="compute"} 12.0
        scaleprobe_collector_success 1.0

    The full exposition of a fixed snapshot is in ``tests/golden/metrics.prom``.
    """

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        clock: Callable[[], float] = time.time,
        version: str | None = None,
    ) -> None:
        self._get_snapshot = get_snapshot
        self._clock = clock
        self._version = package_version() if version is None else version

    def collect(self) -> Iterator[Metric]:
        snapshot: Snapshot | None = None
        try:
            snapshot = self._get_snapshot()
            families, rendered = self.snapshot_families(snapshot)
        except Exception:  # a scrape must never fail because of the snapshot source
            log.exception("reading the snapshot failed", extra={"probe": "collector"})
            families, rendered = [], False
        yield from families
        yield from self.live_families(snapshot, rendered)

    def snapshot_families(self, snapshot: Snapshot | None) -> tuple[list[Metric], bool]:
        """The families that depend on ``snapshot`` alone, and whether rendering them worked.

        They stay the same for as long as the snapshot is served, so ``/metrics`` encodes them
        once per snapshot (``exporter.exposition``); what changes between scrapes of one
        snapshot is in ``live_families``.
        """
        try:
            return self.render(snapshot), True
        except Exception:  # a scrape must never fail because of the snapshot
            log.exception("rendering the snapshot failed", extra={"probe": "collector"})
            return [], False

    def live_families(self, snapshot: Snapshot | None, rendered: bool) -> list[Metric]:
        """The snapshot's age (read from ``clock`` now) and ``scaleprobe_collector_success``."""
        out = _Families([AGE, SUCCESS])
        if snapshot is not None:
            with contextlib.suppress(Exception):  # a malformed snapshot: no age, success 0 above
                age_seconds = max(0.0, self._clock() - snapshot.created_at_seconds)
                out.add(AGE.name, [], age_seconds)
        out.add(SUCCESS.name, [], 1.0 if rendered else 0.0)
        return out.nonempty()

    def render(self, snapshot: Snapshot | None) -> list[Metric]:
        """The families of ``snapshot`` but its age (raises on a malformed snapshot)."""
        out = _Families(SPECS)
        build = _build_versions(snapshot)
        out.add(
            "scaleprobe_build_info",
            [
                self._version,
                build.get("torch_version", ""),
                build.get("transformers_version", ""),
            ],
            1.0,
        )
        if snapshot is not None:
            out.add("scaleprobe_snapshot_timestamp_seconds", [], snapshot.created_at_seconds)
            for device in snapshot.devices:
                _render_device(out, device)
            out.add("scaleprobe_state_write_errors_total", [], snapshot.state_write_errors_total)
        return out.nonempty()


def _build_versions(snapshot: Snapshot | None) -> dict[str, str]:
    """torch/transformers versions from the snapshot, else from a device's worker environment."""
    if snapshot is None:
        return {}
    versions = dict(snapshot.build)
    for device in snapshot.devices:
        for key in ("torch_version", "transformers_version"):
            if not versions.get(key) and device.environment.get(key):
                versions[key] = str(device.environment[key])
    return versions


def _render_device(out: _Families, device: DeviceState) -> None:
    name = device.device
    identity = device.identity
    out.add(
        "scaleprobe_device_info",
        [
            name,
            identity.get("gpu", ""),
            identity.get("UUID", ""),
            identity.get("modelName", ""),
            identity.get("driver_version", ""),
        ],
        1.0,
    )
    out.add("scaleprobe_up", [name], 1.0 if device.up else 0.0)
    out.add(
        "scaleprobe_last_calibration_timestamp_seconds",
        [name],
        device.calibration_timestamp_seconds,
    )
    out.add("scaleprobe_last_cycle_timestamp_seconds", [name], device.last_cycle_timestamp_seconds)
    out.add("scaleprobe_cycle_consecutive_failures", [name], device.consecutive_failures)
    checked = device.guard.get("checked")
    out.add("scaleprobe_guard_checked", [name], None if checked is None else float(bool(checked)))
    _render_calibration(out, name, device.history)
    for model in device.models:
        _render_model(out, name, model)
    _render_probe_counters(out, device)


def calibration_parameters(sample: CalibrationSample) -> dict[str, float]:
    """A calibration sample as flat named parameters (the ``parameter`` label's values)."""
    parameters = {
        f"compute_flops_per_second_{dtype}": rate
        for dtype, rate in sorted(sample.compute_flops_per_second.items())
    }
    parameters["memory_bandwidth_bytes_per_second"] = sample.memory_bandwidth_bytes_per_second
    parameters["dispatch_seconds"] = sample.dispatch_seconds
    return parameters


def calibration_change_ratios(history: Sequence[CalibrationSample]) -> dict[str, float]:
    """(latest − median of the earlier samples) / that median, per parameter; 0 with one sample."""
    if not history:
        return {}
    latest = calibration_parameters(history[-1])
    earlier = [calibration_parameters(sample) for sample in history[:-1]]
    changes: dict[str, float] = {}
    for parameter, value in latest.items():
        past = [p[parameter] for p in earlier if parameter in p and math.isfinite(p[parameter])]
        if not past:
            changes[parameter] = 0.0
            continue
        reference = statistics.median(past)
        if reference > 0:
            changes[parameter] = (value - reference) / reference
    return changes


def _render_calibration(out: _Families, device: str, history: Sequence[CalibrationSample]) -> None:
    if not history:
        return
    latest = history[-1]
    for dtype, rate in sorted(latest.compute_flops_per_second.items()):
        out.add("scaleprobe_probe_compute_flops_per_second", [device, dtype], rate)
    out.add(
        "scaleprobe_probe_memory_bandwidth_bytes_per_second",
        [device],
        latest.memory_bandwidth_bytes_per_second,
    )
    out.add("scaleprobe_probe_dispatch_seconds", [device], latest.dispatch_seconds)
    for parameter, change in calibration_change_ratios(history).items():
        out.add("scaleprobe_calibration_change_ratio", [device, parameter], change)
    out.add("scaleprobe_calibration_history_samples", [device], len(history))


def _render_model(out: _Families, device: str, model: ModelState) -> None:
    key = [device, model.model, model.dtype]
    for point in model.points:
        _render_point(out, [*key, point.batch_size, point.seq_len], point)
    out.add("scaleprobe_prediction_mape_ratio", key, model.mape_ratio)
    out.add("scaleprobe_drift_ratio", key, model.drift_ratio)
    out.add(
        "scaleprobe_serving_point_info",
        [*key, model.serving_batch_size, model.serving_seq_len],
        1.0,
    )
    out.add(
        "scaleprobe_predicted_capacity_sequences_per_second",
        key,
        model.capacity.throughput_sequences_per_second,
    )
    out.add(
        "scaleprobe_predicted_capacity_tokens_per_second",
        key,
        model.capacity.throughput_tokens_per_second,
    )
    for seq_len, batch_size in sorted(model.max_batch_size.items()):
        out.add("scaleprobe_predicted_max_batch_size", [*key, seq_len], batch_size)


def _render_point(out: _Families, labels: list[object], point: PointRecord) -> None:
    predicted = point.predicted
    out.add(
        "scaleprobe_predicted_throughput_sequences_per_second",
        labels,
        predicted.throughput_sequences_per_second,
    )
    out.add("scaleprobe_predicted_latency_seconds", labels, predicted.latency_seconds)
    out.add(
        "scaleprobe_predicted_framework_overhead_ratio",
        labels,
        predicted.framework_overhead_ratio,
    )
    measured = point.measured
    if measured is None:
        return
    out.add(
        "scaleprobe_measured_throughput_sequences_per_second",
        labels,
        point.measured_throughput_sequences_per_second,
    )
    out.add("scaleprobe_measured_latency_seconds", labels, measured.latency_seconds)
    out.add("scaleprobe_measured_timestamp_seconds", labels, measured.timestamp_seconds)
    out.add(
        "scaleprobe_measured_framework_overhead_ratio",
        labels,
        measured.framework_overhead_ratio,
    )
    out.add("scaleprobe_prediction_error_ratio", labels, point.prior_error_ratio)
    out.add("scaleprobe_baseline_error_ratio", labels, point.baseline_error_ratio)
    out.add(
        "scaleprobe_measured_model_flops_utilization_ratio",
        labels,
        point.measured_mfu_ratio,
    )


def _render_probe_counters(out: _Families, device: DeviceState) -> None:
    counts = device.probe_runs_total
    probes = _ordered(PROBES, (probe for probe, _ in counts))
    outcomes = _ordered(PROBE_OUTCOMES, (outcome for _, outcome in counts))
    for probe in probes:
        for outcome in outcomes:
            out.add(
                "scaleprobe_probe_runs_total",
                [device.device, probe, outcome],
                counts.get((probe, outcome), 0),
            )
    for probe, duration_seconds in sorted(device.probe_duration_seconds.items()):
        out.add("scaleprobe_probe_duration_seconds", [device.device, probe], duration_seconds)
    out.add(
        "scaleprobe_probe_device_seconds_total",
        [device.device],
        device.probe_device_seconds_total,
    )


def _ordered(known: Iterable[str], seen: Iterable[str]) -> list[str]:
    """The known names in their order, then any others the snapshot holds, sorted."""
    known = list(known)
    return known + sorted(set(seen) - set(known))
