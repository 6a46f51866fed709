"""Calibration from probes, robust refit from measured model points, transfer across devices.

Three steps, each usable alone:

1. ``calibrate(ProbeResults)``: the device parameters from the calibration probes alone. The
   compute probe's best rate is the GEMM rate; its rates at smaller sizes give the saturation
   curve's half size; the copy probe gives the bandwidth; the dispatch probe the host cost per op.
2. ``refit(params, points, architectures)``: adjusts five multipliers (GEMM rate, GEMM half size,
   elementwise bandwidth, host cost per op, and on a CPU with the probe figure the first-touch
   cost per byte) to measured forward passes, minimising a Huber loss of
   the log latency ratios (and, for points with a measured framework-overhead share, of the log
   ratios of the host time it implies) plus a Gaussian prior pulling each multiplier toward 1,
   i.e. toward the probe calibration. Few free parameters, a robust loss and the prior are why
   one or two bad points cannot send it wild; with many good points the data win. With fewer
   than ``MIN_POINTS_ALL_FREE`` points only two move: the GEMM rate and the host cost (the level
   of the two regimes), or on a CPU whose allocator reuses large blocks the GEMM rate and the
   small products' half size; the others bend the curve, and a handful of points cannot place
   them.
3. ``transfer(params, source, target)``: carries a calibration to another device by datasheet
   ratios (capacity planning for a device you do not have).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scaleprobe.models.architecture import Architecture
from scaleprobe.models.costs import ForwardCost, forward_cost
from scaleprobe.models.devices import (
    DeviceParams,
    DeviceSpec,
    bandwidth_ladder,
    params_from_spec,
)
from scaleprobe.models.errors import InputError
from scaleprobe.models.predict import cache_ratio, time_forward

# Host cost of one nn.Module call (Python: __call__, hooks, HF's decorators) relative to the
# dispatch probe's cost per tiny op: on this machine 0.9 µs per op, about 8 µs per module call
# (a 12-layer hidden-32 BERT, compute negligible: 2.2 ms for 482 ops in 212 module calls).
DEFAULT_MODULE_FACTOR = 9.0
# Elementwise kernels of a forward run below the copy probe's streaming bandwidth (several
# passes over small tensors, reductions in LayerNorm/softmax, GELU's arithmetic). The CPU figure
# when the memory probe did not measure its elementwise chain, or when the process's allocator
# maps large outputs anew (glibc's defaults): then outputs under 32 MiB fault too, now and then
# (the heap's top handed back and taken again), which no probe reproduces and this figure absorbs
# (docs/model.md, "Elementwise bandwidth").
DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO = 0.5
# A measured ratio outside this range is clamped into it: the chain was disturbed.
CPU_ELEMENTWISE_RATIO_RANGE = (0.25, 2.0)
# The share of the copy bandwidth at which a linear layer's bias fill writes its fresh output
# (CPU): profiled, addmm's copy_ ran at 0.48-0.79 W at two threads with glibc's defaults and
# about 0.35 W under tcmalloc (predict.fill_seconds); not measured by a probe.
CPU_FILL_BANDWIDTH_RATIO = 0.5
DEFAULT_CPU_GEMM_HALF_SIZE = 32.0
# Products smaller than this many FLOPs time the library's per-call set-up, not the curve.
MIN_CURVE_FLOPS = 1e6
# A product within this share of the peak rate is at the peak, as far as the probe can tell.
NEAR_PEAK_RATIO = 0.97


@dataclass(frozen=True)
class ProbeResults:
    """What the calibration probes measured on one device (the worker's ``probes`` records)."""

    compute_flops_per_second: dict[str, float]
    memory_bandwidth_bytes_per_second: float | None
    dispatch_seconds: float | None
    kernel_floor_seconds: float | None = None
    # dtype -> [(m, n, k, flops_per_second)] from the compute probe's detail["rates_by_size"]
    rates_by_size: Mapping[str, tuple[tuple[int, int, int, float], ...]] | None = None
    # CPU only (None when the probe did not measure them, e.g. records of older workers): the
    # memory probe's page-fault cost per byte of a fresh large output, the compute probe's
    # tanh and exp rates over a cache-resident tensor.
    first_touch_seconds_per_byte: float | None = None
    tanh_elements_per_second: float | None = None
    exp_elements_per_second: float | None = None
    # dtype -> (m, n, k, flops_per_second) of the compute probe's streamed product (CPU): a
    # batch-1 linear layer over weights read from memory, detail["streamed_product"]
    streamed_products: Mapping[str, tuple[int, int, int, float]] | None = None
    # (seconds, host ops, module calls) of the dispatch probe's tiny real encoder (CPU),
    # detail["tiny_encoder"]: the host cost of a forward's own op mix
    tiny_encoder: tuple[float, int, int] | None = None
    # the same encoder's host seconds with caches evicted before each linear layer, as a real
    # forward's weights evict them (detail["tiny_encoder"]["cold_seconds"]; None in older records)
    tiny_encoder_cold_seconds: float | None = None
    # (working-set bytes, copy rate over the DRAM copy rate) of the memory probe's cache-sized
    # copies (CPU), detail["bandwidth_ratio_by_working_set"]; empty in older records
    bandwidth_ratio_by_working_set: tuple[tuple[float, float], ...] = ()
    # whether the process's allocator maps a large output anew each time (CPU; the memory
    # probe's detail["large_outputs_fault"]; None in older records, read as glibc's default: yes)
    large_outputs_fault: bool | None = None
    # (bytes per op, bytes per second) of the memory probe's elementwise chain (CPU), from
    # detail["elementwise_chain"]; None in older records
    elementwise_chain: tuple[float, float] | None = None

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> ProbeResults:
        """Read a worker result's ``probes`` list (docs/internals.md), skipping failed probes."""
        compute: dict[str, float] = {}
        by_size: dict[str, list[tuple[int, int, int, float]]] = {}
        bandwidth = dispatch = floor = first_touch = None
        large_outputs_fault: bool | None = None
        chain: tuple[float, float] | None = None
        encoder: tuple[float, int, int] | None = None
        encoder_cold: float | None = None
        ladder: tuple[tuple[float, float], ...] = ()
        transcendental: dict[str, float] = {}
        streamed: dict[str, tuple[int, int, int, float]] = {}
        for record in records:
            if not isinstance(record, Mapping) or record.get("outcome") != "ok":
                continue
            probe, value = record.get("probe"), record.get("value")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                continue
            detail = record.get("detail") or {}
            if probe == "compute":
                dtype = str(record.get("dtype", "float32"))
                compute[dtype] = max(compute.get(dtype, 0.0), float(value))
                for row in detail.get("rates_by_size") or []:
                    try:
                        entry = (
                            int(row["m"]),
                            int(row["n"]),
                            int(row["k"]),
                            float(row["flops_per_second"]),
                        )
                    except (KeyError, TypeError, ValueError):
                        continue
                    if entry[3] > 0:
                        by_size.setdefault(dtype, []).append(entry)
                        compute[dtype] = max(compute[dtype], entry[3])
                product = _reading(
                    detail.get("streamed_product"),
                    (("m", int), ("n", int), ("k", int), ("flops_per_second", float)),
                )
                if product is not None and _positive_number(product[3]):
                    m, n, k, product_rate = product
                    streamed[dtype] = (int(m), int(n), int(k), float(product_rate))
                rates = detail.get("transcendental_elements_per_second") or {}
                for function in ("tanh", "exp"):
                    rate = rates.get(function) if isinstance(rates, Mapping) else None
                    if isinstance(rate, (int, float)) and _positive_number(rate):
                        transcendental[function] = float(rate)
            elif probe == "memory":
                bandwidth = float(value)
                raw = detail.get("first_touch_seconds_per_byte")
                if isinstance(raw, (int, float)) and (_positive_number(raw) or raw == 0):
                    first_touch = float(raw)
                ladder = _ladder(detail.get("bandwidth_ratio_by_working_set"))
                reuse = detail.get("large_outputs_fault")
                large_outputs_fault = reuse if isinstance(reuse, bool) else None
                ops = _reading(
                    detail.get("elementwise_chain"),
                    (("bytes_moved", float), ("ops", float), ("bytes_per_second", float)),
                )
                if ops is not None and all(_positive_number(v) for v in ops):
                    chain = (ops[0] / ops[1], ops[2])
            elif probe == "dispatch":
                dispatch = float(value)
                raw_floor = detail.get("kernel_floor_seconds")
                if isinstance(raw_floor, (int, float)) and raw_floor >= 0:
                    floor = float(raw_floor)
                tiny = _reading(
                    detail.get("tiny_encoder"),
                    (("seconds", float), ("host_ops", int), ("module_calls", int)),
                )
                if tiny is not None and _positive_number(tiny[0]) and tiny[1] + tiny[2] > 0:
                    encoder = (float(tiny[0]), int(tiny[1]), int(tiny[2]))
                    cold = _reading(detail.get("tiny_encoder"), (("cold_seconds", float),))
                    if cold is not None and _positive_number(cold[0]):
                        encoder_cold = float(cold[0])
        for dtype, (_, _, _, product_rate) in streamed.items():
            # A 16-row product streaming its weights from memory cannot outrun the rate of the
            # kernel forwards use. When it does, the square products took a slower path than
            # the forwards' linear layers: in bfloat16 on a CPU without native bfloat16 (an EPYC
            # guest: 2048² at 0.27 GFLOP/s, 128² at 2.0, the streamed product and the forwards at
            # 14-16; BENCHMARKS.md, "bfloat16 where the square product is slow").
            if dtype in compute:
                compute[dtype] = max(compute[dtype], product_rate)
        return cls(
            compute_flops_per_second=compute,
            memory_bandwidth_bytes_per_second=bandwidth,
            dispatch_seconds=dispatch,
            kernel_floor_seconds=floor,
            rates_by_size={k: tuple(v) for k, v in by_size.items()},
            first_touch_seconds_per_byte=first_touch,
            tanh_elements_per_second=transcendental.get("tanh"),
            exp_elements_per_second=transcendental.get("exp"),
            streamed_products=streamed,
            tiny_encoder=encoder,
            tiny_encoder_cold_seconds=encoder_cold,
            bandwidth_ratio_by_working_set=ladder,
            large_outputs_fault=large_outputs_fault,
            elementwise_chain=chain,
        )


def _reading(value: Any, fields: Sequence[tuple[str, type]]) -> tuple[Any, ...] | None:
    """The named fields of a probe detail's sub-document, each cast by its type; None when the
    document is absent or a field is missing or unreadable (a record of an older or broken
    worker)."""
    try:
        return tuple(cast(value[name]) for name, cast in fields)
    except (KeyError, TypeError, ValueError):
        return None


def _ladder(value: Any) -> tuple[tuple[float, float], ...]:
    """The memory probe's ``[bytes, ratio]`` pairs; empty when absent or unreadable (a record of
    an older or broken worker: the model then charges DRAM rates)."""
    try:
        return bandwidth_ladder(value) if value is not None else ()
    except InputError:
        return ()


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def gemm_half_size_from_rates(
    rates: Sequence[tuple[int, int, int, float]], peak: float
) -> float | None:
    """Fit ``rate(x) = peak · x / (x + half)`` to the probe's rates at several sizes (x = min dim).

    Each size below the peak gives ``half = x · (peak / rate - 1)``; the geometric mean is robust
    to one noisy size. Products under ``MIN_CURVE_FLOPS`` are left out: a 32³ product is 65 kFLOP,
    a few µs, and its time is the library's per-call set-up, not the efficiency curve (on this
    CPU it alone would put the half size at ~300 where forward passes say ~30). A tall-skinny
    product (m = 16, n = k = 768: a batch-1 linear layer) is the most informative size: its x is
    near the knee, so its deficit is large and little disturbed by noise. None when no size is
    clearly below the peak.
    """
    estimates = []
    # sizes above the one that reached the peak carry no curve information (a larger product
    # that ran slower was disturbed, or spilled a cache)
    peak_size = max(
        (float(min(m, n, k)) for m, n, k, rate in rates if rate >= peak), default=float("inf")
    )
    for m, n, k, rate in rates:
        x = float(min(m, n, k))
        big_enough = 2.0 * m * n * k >= MIN_CURVE_FLOPS
        if big_enough and x < peak_size and 0 < rate < NEAR_PEAK_RATIO * peak:
            estimates.append(x * (peak / rate - 1.0))
    if not estimates:
        return None
    return float(math.exp(sum(math.log(e) for e in estimates) / len(estimates)))


def _half_size(probes: ProbeResults, dtype: str) -> float | None:
    """x½ for one dtype: from the streamed product when the probe measured one (a forward's
    linear layers read their weights from memory; small square products reuse cached operands
    and run nearer the peak), else from the square sizes."""
    peak = probes.compute_flops_per_second[dtype]
    streamed = (probes.streamed_products or {}).get(dtype)
    if streamed is not None:
        m, n, k, rate = streamed
        # at (or, by noise, above) the peak: the deficit the probe can resolve, not zero, so a
        # refit can still scale it
        return min(m, n, k) * max(peak / rate - 1.0, 1.0 / NEAR_PEAK_RATIO - 1.0)
    return gemm_half_size_from_rates((probes.rates_by_size or {}).get(dtype, ()), peak)


def measured_elementwise_ratio(probes: ProbeResults, params: DeviceParams) -> float | None:
    """ρ as the probes measured it on a CPU: the memory probe's elementwise chain over the copy
    bandwidth and the cache ladder's ratio at the chain's bytes per op (the rate the model would
    give it at ρ = 1; ``params`` carries the bandwidth and the ladder), when the process's
    allocator hands large blocks back (its check read no faults); None otherwise, and
    ``calibrate`` takes ``DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO``, which also absorbs the
    faults glibc's defaults cause under 32 MiB."""
    if probes.large_outputs_fault is not False or probes.elementwise_chain is None:
        return None
    bytes_per_op, rate = probes.elementwise_chain
    streaming = params.memory_bandwidth_bytes_per_second * cache_ratio(bytes_per_op, params)
    low, high = CPU_ELEMENTWISE_RATIO_RANGE
    return min(max(rate / streaming, low), high)


def _first_touch(probes: ProbeResults) -> float | None:
    """What a large fresh output's page faults cost per byte in this process: the probe's price,
    or 0 when its allocator hands freed large blocks back instead of mapping them anew (the
    memory probe's allocator check), so that no forward pays it."""
    if probes.large_outputs_fault is False and probes.first_touch_seconds_per_byte is not None:
        return 0.0
    return probes.first_touch_seconds_per_byte


def calibrate(
    probes: ProbeResults,
    *,
    kind: str = "cpu",
    memory_bytes: int = 16 * 1024**3,
    name: str = "cpu",
    reserved_memory_bytes: int | None = None,
) -> DeviceParams:
    """Device parameters from the calibration probes alone (no measurement of a model).

    A missing compute or memory probe is an InputError: there is nothing to predict from.
    """
    if not probes.compute_flops_per_second:
        raise InputError("no successful compute probe: cannot calibrate the compute rate")
    if not probes.memory_bandwidth_bytes_per_second:
        raise InputError("no successful memory probe: cannot calibrate the memory bandwidth")
    if kind not in ("cpu", "gpu"):
        raise InputError(f"device kind must be cpu or gpu, got {kind!r}")
    halves = [
        half
        for dtype in probes.compute_flops_per_second
        if (half := _half_size(probes, dtype)) is not None
    ]
    gpu = kind == "gpu"
    half_size = (
        float(np.median(halves)) if halves else (64.0 if gpu else DEFAULT_CPU_GEMM_HALF_SIZE)
    )
    dispatch = (
        probes.dispatch_seconds if probes.dispatch_seconds is not None else (10e-6 if gpu else 5e-6)
    )
    cold_ratio = 1.0
    if not gpu and probes.tiny_encoder is not None:
        # the host cost per op of a real forward's mix, module calls at DEFAULT_MODULE_FACTOR ops;
        # how much more it costs with caches as a real forward's weights leave them
        seconds, host_ops, module_calls = probes.tiny_encoder
        dispatch = seconds / (host_ops + DEFAULT_MODULE_FACTOR * module_calls)
        if probes.tiny_encoder_cold_seconds is not None:
            cold_ratio = max(1.0, probes.tiny_encoder_cold_seconds / seconds)
    floor = (
        probes.kernel_floor_seconds
        if probes.kernel_floor_seconds is not None
        else (3e-6 if gpu else 0.0)
    )
    params = DeviceParams(
        name=name,
        kind=kind,
        compute_flops_per_second=dict(probes.compute_flops_per_second),
        memory_bandwidth_bytes_per_second=probes.memory_bandwidth_bytes_per_second,
        dispatch_seconds=dispatch,
        module_seconds=dispatch * DEFAULT_MODULE_FACTOR,
        kernel_floor_seconds=floor if gpu else 0.0,
        overlap=gpu,
        memory_bytes=int(memory_bytes),
        gemm_efficiency_ratio=1.0,
        gemm_half_size=half_size,
        elementwise_bandwidth_ratio=0.8 if gpu else DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO,
        reserved_memory_bytes=(768 * 1024**2 if gpu else 0)
        if reserved_memory_bytes is None
        else reserved_memory_bytes,
        source="probes",
        # CPU terms only: a GPU's caching allocator reuses memory, its transcendentals are cheap
        first_touch_seconds_per_byte=None if gpu else _first_touch(probes),
        tanh_elements_per_second=None if gpu else probes.tanh_elements_per_second,
        exp_elements_per_second=None if gpu else probes.exp_elements_per_second,
        cold_host_ratio=cold_ratio,
        bandwidth_ratio_by_working_set=() if gpu else probes.bandwidth_ratio_by_working_set,
        fill_bandwidth_ratio=None if gpu else CPU_FILL_BANDWIDTH_RATIO,
    )
    if gpu:
        return params
    measured = measured_elementwise_ratio(probes, params)
    return replace(
        params,
        elementwise_bandwidth_ratio=DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO
        if measured is None
        else measured,
    )


@dataclass(frozen=True)
class MeasuredPoint:
    """One measured forward pass of a model (median latency over several runs)."""

    model: str
    batch_size: int
    seq_len: int
    dtype: str
    latency_seconds: float
    framework_overhead_ratio: float | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MeasuredPoint:
        """From a worker ``points`` record with outcome ok."""
        return cls(
            model=str(record["model"]),
            batch_size=int(record["batch_size"]),
            seq_len=int(record["seq_len"]),
            dtype=str(record["dtype"]),
            latency_seconds=float(record["latency_seconds"]),
            framework_overhead_ratio=record.get("framework_overhead_ratio"),
        )


@dataclass(frozen=True)
class Residual:
    """Measured against predicted at one point; ratios are on throughput."""

    model: str
    batch_size: int
    seq_len: int
    dtype: str
    measured_latency_seconds: float
    predicted_latency_seconds: float
    error_ratio: float  # (measured − predicted) / predicted throughput
    outlier: bool


@dataclass(frozen=True)
class FitReport:
    """The refitted parameters, the residual of every point, and the errors before and after."""

    params: DeviceParams
    residuals: tuple[Residual, ...]
    mape_ratio: float
    initial_mape_ratio: float
    multipliers: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_dict(),
            "residuals": [r.__dict__ for r in self.residuals],
            "mape_ratio": self.mape_ratio,
            "initial_mape_ratio": self.initial_mape_ratio,
            "multipliers": dict(self.multipliers),
        }


# The refit's free parameters: a log multiplier each, with the prior's standard deviation (in log
# units: 0.7 lets a parameter move by a factor of two at the cost of one "sigma").
FREE_PARAMETERS = ("compute", "gemm_half_size", "elementwise_bandwidth", "dispatch", "first_touch")
PRIOR_SIGMA = {
    "compute": 0.5,
    "gemm_half_size": 1.0,
    "elementwise_bandwidth": 0.7,
    "dispatch": 0.7,
    "first_touch": 0.5,
}
# With fewer measured points than this, a refit frees only FEW_POINTS_FREE: the level of the
# compute-bound and of the host-bound regime. On every stored accuracy sweep (nine at two
# threads, four at one) a refit on 2 or 4 points that also freed the half size, the elementwise
# bandwidth and the first-touch cost predicted the rest of the curve worse (BENCHMARKS.md,
# "How many parameters a few points can fit").
MIN_POINTS_ALL_FREE = 2 * len(FREE_PARAMETERS)
FEW_POINTS_FREE = ("compute", "dispatch")
# ... except on a CPU whose allocator hands freed large blocks back (the calibration charges no
# page faults: ``first_touch_seconds_per_byte`` 0): there the level of the small products, x½,
# moves instead of the host cost. Nothing unmodelled then bends the small and middle points, the
# small points' error is mostly the streamed product's reading (x½ read 48–67 over the reuse
# sweeps), and the host cost has its own steadier probe and the measured overhead shares. Under
# glibc's defaults, outputs under 32 MiB page-fault now and then, unmodelled, and an x½ fitted
# through them bends the whole curve (BigBird's two points 7.8–13.3% in 7 of 22 runs, from
# 4.1–9.8%), so the host cost moves there (BENCHMARKS.md, "Which two multipliers a few points
# move").
FEW_POINTS_FREE_REUSED = ("compute", "gemm_half_size")


def default_free(point_count: int, params: DeviceParams | None = None) -> tuple[str, ...]:
    """The multipliers a refit of ``params`` on ``point_count`` points frees unless told
    otherwise: all five from ``MIN_POINTS_ALL_FREE`` points, else ``FEW_POINTS_FREE_REUSED``
    where ``params`` charge large outputs no page faults (a CPU calibration that found them
    reused) and ``FEW_POINTS_FREE`` elsewhere (a GPU, glibc's defaults, no figure)."""
    if point_count >= MIN_POINTS_ALL_FREE:
        return FREE_PARAMETERS
    if params is not None and params.kind == "cpu" and params.first_touch_seconds_per_byte == 0.0:
        return FEW_POINTS_FREE_REUSED
    return FEW_POINTS_FREE


# Residual scale of the Huber loss (log latency ratio): about the machine noise of one point.
NOISE_SCALE = 0.02
# The same for the host time a point's measured framework-overhead share implies (log ratio of
# share × latency, measured over predicted): a coarser figure (the CPU's is read from a profiled
# forward, whose recording adds about a microsecond per op), so a wider scale. A measured share
# under MIN_OVERHEAD_RATIO says nothing about the host (the point is left out of this term), and
# the predicted share is floored at it.
OVERHEAD_NOISE_SCALE = 0.3
MIN_OVERHEAD_RATIO = 0.02
HUBER_K = 1.5
OUTLIER_RATIO = 0.25


def apply_multipliers(params: DeviceParams, theta: Sequence[float] | np.ndarray) -> DeviceParams:
    """The parameters with the refit's log multipliers applied (order of FREE_PARAMETERS; a
    shorter ``theta`` leaves the rest at 1, so four multipliers from older refits still apply).
    The first-touch multiplier does nothing without a measured ``first_touch_seconds_per_byte``;
    the elementwise one scales the bias fill's ratio too.
    """
    values = [math.exp(float(t)) for t in theta] + [1.0] * (len(FREE_PARAMETERS) - len(theta))
    compute, half, elementwise, dispatch, first_touch = values
    return replace(
        params,
        compute_flops_per_second={
            k: v * compute for k, v in params.compute_flops_per_second.items()
        },
        gemm_half_size=params.gemm_half_size * half,
        elementwise_bandwidth_ratio=params.elementwise_bandwidth_ratio * elementwise,
        fill_bandwidth_ratio=None
        if params.fill_bandwidth_ratio is None
        else params.fill_bandwidth_ratio * elementwise,
        dispatch_seconds=params.dispatch_seconds * dispatch,
        module_seconds=params.module_seconds * dispatch,
        first_touch_seconds_per_byte=None
        if params.first_touch_seconds_per_byte is None
        else params.first_touch_seconds_per_byte * first_touch,
    )


def _costs(
    points: Sequence[MeasuredPoint], architectures: Mapping[str, Architecture]
) -> list[ForwardCost]:
    costs = []
    for point in points:
        if point.model not in architectures:
            raise InputError(
                f"measured point of unknown model {point.model!r}; "
                f"known: {', '.join(architectures)}"
            )
        if not point.latency_seconds > 0:
            raise InputError(f"measured latency must be positive, got {point.latency_seconds!r}")
        costs.append(
            forward_cost(architectures[point.model], point.batch_size, point.seq_len, point.dtype)
        )
    return costs


def _log_residuals(
    params: DeviceParams, points: Sequence[MeasuredPoint], costs: Sequence[ForwardCost]
) -> np.ndarray:
    return np.array(
        [
            math.log(p.latency_seconds / time_forward(c, params).latency_seconds)
            for p, c in zip(points, costs, strict=True)
        ]
    )


def _scaled_residuals(
    params: DeviceParams, points: Sequence[MeasuredPoint], costs: Sequence[ForwardCost]
) -> np.ndarray:
    """The refit's residual vector: each point's log latency ratio over NOISE_SCALE, then, for
    points with a measured overhead share of at least MIN_OVERHEAD_RATIO, the log ratio of the
    host time it implies (share × latency, measured over predicted) over OVERHEAD_NOISE_SCALE.

    Latencies alone can hardly tell host cost from a slower small-GEMM curve at small sizes, the
    share can (on a CPU the profiler measured ~8.5 ms of host time in bert-base 1 × 16 where the
    probe's per-op cost predicted 1.9 ms). One forward timing per point serves both.
    """
    latency: list[float] = []
    host: list[float] = []
    for point, cost in zip(points, costs, strict=True):
        timing = time_forward(cost, params)
        latency.append(math.log(point.latency_seconds / timing.latency_seconds))
        share = point.framework_overhead_ratio
        if share is None or not MIN_OVERHEAD_RATIO <= share < 1.0:
            continue
        # floored, so which points count never changes during the fit
        predicted_share = max(
            1.0 - timing.device_seconds / timing.latency_seconds, MIN_OVERHEAD_RATIO
        )
        host.append(
            math.log((share * point.latency_seconds) / (predicted_share * timing.latency_seconds))
        )
    return np.concatenate([np.array(latency) / NOISE_SCALE, np.array(host) / OVERHEAD_NOISE_SCALE])


def refit(
    params: DeviceParams,
    points: Sequence[MeasuredPoint],
    architectures: Mapping[str, Architecture],
    *,
    free: Sequence[str] | None = None,
    iterations: int = 40,
) -> FitReport:
    """Refit the device parameters to measured points (robust, regularised; see module docstring).

    ``free`` names the multipliers allowed to move (default :func:`default_free`: all five from
    ``MIN_POINTS_ALL_FREE`` points, else the GEMM rate and the host cost, or the GEMM rate and x½
    where large outputs are reused); the others stay at 1.
    An empty ``points`` returns the parameters unchanged.
    """
    if free is None:
        free = default_free(len(points), params)
    unknown = set(free) - set(FREE_PARAMETERS)
    if unknown:
        raise InputError(
            f"unknown free parameter(s) {sorted(unknown)}; allowed: {', '.join(FREE_PARAMETERS)}"
        )
    costs = _costs(points, architectures)
    mask = np.array([name in free for name in FREE_PARAMETERS], dtype=float)
    sigma = np.array([PRIOR_SIGMA[name] for name in FREE_PARAMETERS])
    theta = np.zeros(len(FREE_PARAMETERS))
    initial = _log_residuals(params, points, costs) if points else np.zeros(0)

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        r = _scaled_residuals(apply_multipliers(params, t), points, costs)
        a = np.abs(r)
        huber = np.where(a <= HUBER_K, 0.5 * r * r, HUBER_K * a - 0.5 * HUBER_K**2)
        return float(huber.sum() + 0.5 * np.sum((t / sigma) ** 2)), r

    if points and mask.any():
        damping = 1e-3
        value, r = objective(theta)
        step_size = 1e-4
        for _ in range(iterations):
            # Gauss-Newton on the IRLS-weighted problem, numerical Jacobian, Levenberg damping.
            weights = np.where(np.abs(r) <= HUBER_K, 1.0, HUBER_K / np.maximum(np.abs(r), 1e-12))
            jacobian = np.zeros((len(r), len(theta)))
            for j in range(len(theta)):
                if not mask[j]:
                    continue
                shifted = theta.copy()
                shifted[j] += step_size
                jacobian[:, j] = (
                    _scaled_residuals(apply_multipliers(params, shifted), points, costs) - r
                ) / step_size
            prior = np.diag(mask / sigma**2)
            hessian = jacobian.T @ (weights[:, None] * jacobian) + prior
            gradient = jacobian.T @ (weights * r) + mask * theta / sigma**2
            improved = False
            while damping < 1e8:
                system = hessian + damping * np.diag(np.diag(hessian) + 1e-9)
                delta = -np.linalg.solve(system + np.diag(1.0 - mask), gradient) * mask
                candidate = np.clip(theta + delta, -4.0, 4.0)
                new_value, new_r = objective(candidate)
                if new_value < value:
                    theta, value, r = candidate, new_value, new_r
                    damping = max(damping / 3, 1e-7)
                    improved = True
                    break
                damping *= 4
            if not improved or float(np.max(np.abs(delta))) < 1e-5:
                break

    fitted = replace(apply_multipliers(params, theta), source="refit" if points else params.source)
    residuals = []
    errors = []
    for point, cost in zip(points, costs, strict=True):
        predicted = time_forward(cost, fitted).latency_seconds
        error = (
            predicted / point.latency_seconds - 1.0
        )  # on throughput: (measured − predicted) / predicted
        errors.append(abs(point.latency_seconds / predicted - 1.0))  # MAPE of throughput
        residuals.append(
            Residual(
                point.model,
                point.batch_size,
                point.seq_len,
                point.dtype,
                point.latency_seconds,
                predicted,
                error,
                abs(error) > OUTLIER_RATIO,
            )
        )
    initial_errors = [abs(math.exp(x) - 1.0) for x in initial]
    return FitReport(
        params=fitted,
        residuals=tuple(residuals),
        mape_ratio=_mape(errors),
        initial_mape_ratio=_mape(initial_errors),
        multipliers=dict(zip(FREE_PARAMETERS, np.exp(theta).tolist(), strict=True)),
    )


def _mape(errors: Sequence[float]) -> float:
    """Mean absolute percentage error of throughput, as a ratio."""
    return float(sum(errors) / len(errors)) if errors else 0.0


def throughput_error_ratio(
    measured_latency_seconds: float, predicted_latency_seconds: float
) -> float:
    """(measured − predicted) / predicted throughput = predicted latency / measured latency − 1."""
    return predicted_latency_seconds / measured_latency_seconds - 1.0


def transfer(
    params: DeviceParams, source_spec: DeviceSpec | None, target_spec: DeviceSpec
) -> DeviceParams:
    """Carry a calibration to ``target_spec`` by datasheet ratios.

    With a catalog ``source_spec`` of the same kind, the measured rates and bandwidth are scaled by
    the target-to-source peak ratios and the fitted efficiencies and host cost are kept (the host
    and the framework are assumed the same). Without one (a calibration made on a CPU, or on a
    device not in the catalog) the target's datasheet defaults are used, keeping only the measured
    host cost when the calibration came from a GPU host.
    """
    target = params_from_spec(target_spec)
    if source_spec is None or params.kind != target.kind:
        if params.kind == "gpu":
            return replace(target, dispatch_seconds=params.dispatch_seconds, source="transfer")
        return replace(target, source="transfer")
    rates = {}
    for dtype, peak in target_spec.peak_flops_per_second.items():
        source_peak = source_spec.peak_flops_per_second.get(dtype)
        if dtype in params.compute_flops_per_second and source_peak:
            rates[dtype] = params.compute_flops_per_second[dtype] * peak / source_peak
        else:
            rates[dtype] = peak
    bandwidth_ratio = (
        target_spec.memory_bandwidth_bytes_per_second
        / source_spec.memory_bandwidth_bytes_per_second
    )
    return replace(
        params,
        name=target_spec.name,
        compute_flops_per_second=rates,
        memory_bandwidth_bytes_per_second=params.memory_bandwidth_bytes_per_second
        * bandwidth_ratio,
        memory_bytes=target_spec.memory_bytes,
        bandwidth_ratio_by_working_set=(),  # the source's caches, not the target's
        source="transfer",
    )
