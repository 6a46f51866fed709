"""Prediction accuracy against measured throughput–sequence-length curves on this machine.

Measures the ground truth (the daemon's own model probe, interleaved rounds, median per point; see
``bench/common.py``) for each model over batch × sequence, and scores four predictions of it,
per model and batch size (MAPE of throughput and the worst point):

- ``probes``: the calibration probes alone (``scaleprobe.models.fit.calibrate``), no measurement
  of any model;
- ``two_point``: the probes plus the published two-point setting, a refit on one compute-dominated
  and one memory-dominated measurement of the model, left out of its score. The memory/framework-
  dominated point is the grid's smallest-work one (batch 1 × shortest sequence). The compute-
  dominated one is the grid point the probes predict slowest among those whose predicted time
  carries no page-fault charge (:func:`compute_dominated_point`): on a GPU, and on a CPU without
  the first-touch figure, the largest-work point (largest batch × longest sequence); on a CPU,
  the largest point whose outputs all stay under ``predict.FRESH_MAPPING_MIN_BYTES`` (4 × 512
  for BERT at this grid), because the largest-work point's time there is up to a third page
  faults whose price depends on the allocator and the hypervisor's page supply of the hour, not
  compute (see ``BENCHMARKS.md``, "The compute-dominated anchor"). ``--two-point-anchor
  largest-work`` scores with the largest-work point everywhere (the report's rule until
  2026-11-30);
- ``refit_k4``, ``refit_k8``: a refit on k measured points of the model placed off the evaluation
  grid (a centred Latin design on log batch × log sequence, rounded to integers; see
  :func:`fit_points`), scored on the whole grid;
- ``refit_all``: a refit on the whole grid, scored on it (in-sample: the limit of the model form);
  every refit frees the multipliers ``models.fit.default_free`` gives its point count and the
  calibration (under ``MIN_POINTS_ALL_FREE`` points, the two-point, k = 4 and k = 8 ones: the
  rate and the host cost, or the rate and x½ where the calibration found large outputs reused);
- ``probes_best_scale``: the probes' prediction times the one factor that fits the grid best, a
  diagnostic (it uses every measurement): the error of the predicted curve's shape. A two-point
  refit sets the level from its two anchors, so its error is about this one plus the
  anchors' own errors from the probes (``anchor_probes_errors``, printed under the table).

It also reports the noise floor (the MAPE of the even rounds' medians against the odd rounds': two
independent sweeps, interleaved in time), the error on encoders not used to fit (refit on
bert-base's points, predict the others and a non-preset tiny BERT), and cross-setting checks on a
subset of bert-base: calibrate with one torch thread count and predict the other, and float32
versus bfloat16.

    python bench/accuracy.py --out bench/results/accuracy.json        # full run (about 20 min)
    python bench/accuracy.py --load bench/results/accuracy.json       # re-score saved data
    python bench/accuracy.py --quick --out /tmp/accuracy-quick.json   # tiny grid (test suite)
    python bench/accuracy.py --load bench/results/accuracy.json \\
        --assume-cpu-figures 2.84e-10,7.08e8,1.92e9                 # what-if, see below
    python bench/accuracy.py --load bench/results/accuracy-10.json \\
        --assume-cache-ladder bench/results/accuracy-11.json        # what-if, see below

``--assume-cpu-figures FIRST_TOUCH,TANH,EXP`` re-scores saved data whose calibrations predate the
CPU first-touch and transcendental probe figures as if they had measured these, and
``--assume-cache-ladder RUN`` those that predate the memory probe's cache ladder as if they had
measured the one of another saved run's calibrations (the median memory probe's; what-ifs: take
the figures from a calibration on the same machine and thread count). ``--without-cache-ladder``
scores as if no calibration had measured it (the ablation).

Re-scoring with ``--load`` uses the current performance model without measuring anything again,
which is how a change to ``scaleprobe.models`` is checked against the same ground truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    STATISTICS,
    TINY_CONFIG,
    TINY_NAME,
    PointKey,
    calibration,
    int_list,
    machine,
    mape,
    read_json,
    split_halves,
    stderr_log,
    sweep,
    throughput_error,
    write_json,
)
from scaleprobe.models import fit
from scaleprobe.models.architecture import (
    PRESETS,
    Architecture,
    architecture_from_config,
)
from scaleprobe.models.costs import forward_cost
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.errors import InputError
from scaleprobe.models.predict import (
    first_touch_seconds,
    fresh_mapped_bytes,
    predict,
    time_forward,
)

SCHEMA = "scaleprobe.bench.accuracy/1"
DEFAULT_MODELS = ("distilbert-base", "bert-base", "bigbird-roberta-base")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)
DEFAULT_SEQ_LENS = (16, 32, 64, 128, 256, 512)
# Latin-design permutations: the i-th batch level is paired with the sigma[i]-th sequence level.
SIGMA = {4: (1, 3, 0, 2), 8: (2, 6, 0, 4, 7, 1, 5, 3)}
SETTINGS = ("probes", "two_point", "refit_k4", "refit_k8", "refit_all")


# --- the plan -------------------------------------------------------------------------------------


def fit_points(
    batch_sizes: Sequence[int], seq_lens: Sequence[int], k: int
) -> list[tuple[int, int]]:
    """k (batch, seq) points spread over the grid's log-range, off the grid where rounding allows.

    Level i of k sits at the centre of the i-th of k equal slices of [log min, log max]; batch
    level i is paired with sequence level ``SIGMA[k][i]`` (a Latin design: every slice of each axis
    used once, spread over the plane). A point that rounds onto a grid point stays (unavoidable on
    a one-value axis) and is then left out of scoring.
    """
    sigma = SIGMA.get(k) or tuple(range(k))

    def level(values: Sequence[int], i: int) -> int:
        low, high = math.log(min(values)), math.log(max(values))
        return max(1, round(math.exp(low + (i + 0.5) / k * (high - low))))

    points = [(level(batch_sizes, i), level(seq_lens, sigma[i])) for i in range(k)]
    seen: list[tuple[int, int]] = []
    for point in points:
        if point not in seen:
            seen.append(point)
    return seen


def two_points(batch_sizes: Sequence[int], seq_lens: Sequence[int]) -> list[tuple[int, int]]:
    """The published setting: the largest-work and the smallest-work point of the grid."""
    return [(max(batch_sizes), max(seq_lens)), (min(batch_sizes), min(seq_lens))]


# The two-point setting's compute-dominated point: the default first (see the module docstring).
TWO_POINT_ANCHORS = ("no-first-touch", "largest-work")


def compute_dominated_point(
    arch: Architecture,
    params: DeviceParams,
    batch_sizes: Sequence[int],
    seq_lens: Sequence[int],
) -> tuple[int, int]:
    """The grid point ``params`` predict slowest among those whose predicted time carries no
    page-fault charge (``first_touch_seconds`` zero for every kernel): the largest-work point
    where ``params`` charge none (a GPU, a CPU calibration without the first-touch figure), and
    it too if every point carries one."""
    candidates = []
    for b in batch_sizes:
        for q in seq_lens:
            cost = forward_cost(arch, b, q, "float32")
            if not any(first_touch_seconds(k, params) for k in cost.kernels):
                candidates.append((time_forward(cost, params).latency_seconds, b * q, b, q))
    if not candidates:
        return two_points(batch_sizes, seq_lens)[0]
    _, _, b, q = max(candidates)
    return (b, q)


# The cross-setting subset stops at this many tokens per forward: one thread runs the largest
# points at half speed, and the subset only needs to span the framework- to compute-bound range.
CROSS_MAX_TOKENS = 2048


def cross_subset(batch_sizes: Sequence[int], seq_lens: Sequence[int]) -> list[tuple[int, int]]:
    """Smallest, middle and largest batch × sequence, up to ``CROSS_MAX_TOKENS`` tokens."""

    def three(values: Sequence[int]) -> list[int]:
        ordered = sorted(set(values))
        return sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]})

    points = [(b, s) for b in three(batch_sizes) for s in three(seq_lens)]
    return [p for p in points if p[0] * p[1] <= CROSS_MAX_TOKENS] or points[:1]


def plan(args: argparse.Namespace, threads: int) -> tuple[list[PointKey], dict[str, Any]]:
    """Every point to measure, and the configs (config.json dicts) of the models."""
    configs: dict[str, Any] = {name: PRESETS[name].to_config() for name in args.models}
    keys: list[PointKey] = []

    def add(model: str, b: int, s: int, dtype: str = "float32", t: int = threads) -> None:
        key = PointKey(model, b, s, dtype, t)
        if key not in keys:
            keys.append(key)

    fits = sorted(
        set(fit_points(args.batch_sizes, args.seq_lens, 4))
        | set(fit_points(args.batch_sizes, args.seq_lens, 8))
    )
    for model in args.models:
        for b in args.batch_sizes:
            for s in args.seq_lens:
                add(model, b, s)
        for b, s in fits:
            add(model, b, s)
    if args.tiny:
        configs[TINY_NAME] = TINY_CONFIG
        for b, s in cross_subset(args.batch_sizes, args.seq_lens):
            add(TINY_NAME, b, s)
    if args.cross:
        model = cross_model(args.models)
        other = 1 if threads != 1 else 2
        for b, s in cross_subset(args.batch_sizes, args.seq_lens):
            add(model, b, s, "float32", other)
            add(model, b, s, "bfloat16", threads)
    return keys, configs


def cross_model(models: Sequence[str]) -> str:
    return "bert-base" if "bert-base" in models else models[0]


# --- measuring ----------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    keys, configs = plan(args, threads)
    started = time.time()
    stderr_log(f"{len(keys)} points, {args.rounds} rounds, torch threads {threads}")
    settings = [("float32", threads)]
    if args.cross:
        settings += [("float32", 1 if threads != 1 else 2), ("bfloat16", threads)]
    calibrations: list[dict[str, Any]] = []
    info = machine()

    def calibrate_round(index: int) -> None:
        # The daemon recalibrates every cycle: one calibration per setting at the start of each
        # of the first --calibrations rounds; the spread of the probes-only error over them is
        # part of the result.
        if index >= args.calibrations:
            return
        for dtype, t in settings:
            torch.set_num_threads(t)
            record = calibration(dtype)
            record["round"] = index
            calibrations.append(record)
        torch.set_num_threads(threads)

    points = sweep(
        keys,
        configs,
        rounds=args.rounds,
        seed=args.seed,
        budget_seconds=args.budget_seconds,
        log=stderr_log,
        before_round=calibrate_round,
        warmup=args.warmup,
    )
    return {
        "schema": SCHEMA,
        "machine": info,
        "machine_at_end": {"load_average": list(os.getloadavg())},
        "command": " ".join(["python", "bench/accuracy.py", *sys.argv[1:]]),
        "settings": {
            "models": list(args.models),
            "batch_sizes": list(args.batch_sizes),
            "seq_lens": list(args.seq_lens),
            "rounds": args.rounds,
            "budget_seconds": args.budget_seconds,
            "warmup": args.warmup,
            "threads": threads,
            "cross": bool(args.cross),
            "tiny": bool(args.tiny),
            "seed": args.seed,
        },
        "configs": configs,
        "calibrations": calibrations,
        "points": points,
        "duration_seconds": time.time() - started,
    }


# --- scoring --------------------------------------------------------------------------------------


def architectures_of(data: Mapping[str, Any]) -> dict[str, Architecture]:
    out = {}
    for name, config in data["configs"].items():
        out[name] = PRESETS[name] if name in PRESETS else architecture_from_config(config, name)
    return out


def median_probe_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per probe, the record whose value is the median of the calibrations' values; its
    first-touch figure (memory, CPU) and the x½ its streamed product gives (compute, CPU) are the
    medians of the calibrations' own, as the daemon takes them over its recent cycles
    (``exporter.cycle.STEADY_SAMPLES``)."""
    by_probe: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("outcome") == "ok":
            by_probe.setdefault(str(record["probe"]), []).append(record)
    chosen = []
    for entries in by_probe.values():
        ordered = sorted(entries, key=lambda r: r["value"])
        record = dict(ordered[(len(ordered) - 1) // 2])
        first_touch = median_first_touch(entries)
        if first_touch is not None:
            record["detail"] = {**record["detail"], "first_touch_seconds_per_byte": first_touch}
        streamed = median_streamed_product(entries, record)
        if streamed is not None:
            record["detail"] = {**record["detail"], "streamed_product": streamed}
        chosen.append(record)
    return chosen


def median_streamed_product(
    entries: Sequence[Mapping[str, Any]], record: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The streamed product of ``record`` (a compute record) at the rate that gives, with its
    peak, the median of the x½ that ``entries`` read each with its own peak (x½ = the product's
    smallest side x (peak / rate - 1), ``models.fit``); None where it has none."""
    product = (record.get("detail") or {}).get("streamed_product")
    if not product:
        return None
    halves = []
    for entry in entries:
        other = (entry.get("detail") or {}).get("streamed_product")
        if other:
            side = min(other["m"], other["n"], other["k"])
            halves.append(side * (entry["value"] / other["flops_per_second"] - 1.0))
    side = min(product["m"], product["n"], product["k"])
    rate = record["value"] / (1.0 + statistics.median(halves) / side)
    return {**product, "flops_per_second": rate}


def median_first_touch(records: Sequence[Mapping[str, Any]]) -> float | None:
    """The median of the records' first-touch figures (memory probe, CPU); None without any."""
    figures = [
        r["detail"]["first_touch_seconds_per_byte"]
        for r in records
        if isinstance(r.get("detail"), Mapping)
        and r["detail"].get("first_touch_seconds_per_byte") is not None
    ]
    return statistics.median(figures) if figures else None


# What-ifs set by main(): figures given to calibrations that lack them (--assume-cpu-figures:
# first-touch s/B, tanh and exp elements/s; --assume-cache-ladder), figures every calibration
# gets whatever it measured (--without-cache-ladder, --first-touch-from-one-thread,
# --elementwise-ratio), the probe readings to score with (--streamed-square,
# --large-outputs-reused) and a factor on the first-touch figure (--first-touch-scale).
ASSUMED_CPU_FIGURES: dict[str, Any] = {}
FORCED_CPU_FIGURES: dict[str, Any] = {}
READINGS: dict[str, bool] = {"streamed_square": False, "large_outputs_reused": False}
FIRST_TOUCH_SCALE: dict[str, float] = {"factor": 1.0}


def square_streamed_product(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """A compute record whose streamed product is its 768 → 768 products' rate alone (the shape
    the probe streamed before it streamed whole encoder layers); other records as they are, and
    so are compute records of the older probe (no ``rates_by_shape``)."""
    detail = record.get("detail")
    product = detail.get("streamed_product") if isinstance(detail, Mapping) else None
    if record.get("probe") != "compute" or not isinstance(product, Mapping):
        return record
    shapes = product.get("rates_by_shape")
    if not shapes:
        return record
    square = {**product, "flops_per_second": shapes[0]["flops_per_second"]}
    return {**record, "detail": {**detail, "streamed_product": square}}


def reused_large_outputs(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """A memory record whose allocator check found freed large blocks handed back (what the
    probe records under tcmalloc or glibc tuned); other records as they are."""
    detail = record.get("detail")
    if record.get("probe") != "memory" or not isinstance(detail, Mapping):
        return record
    return {**record, "detail": {**detail, "large_outputs_fault": False}}


def params_from(records: Sequence[Mapping[str, Any]]) -> DeviceParams:
    if READINGS["streamed_square"]:
        records = [square_streamed_product(r) for r in records]
    if READINGS["large_outputs_reused"]:
        records = [reused_large_outputs(r) for r in records]
    params = fit.calibrate(fit.ProbeResults.from_records(records), kind="cpu")
    missing = {k: v for k, v in ASSUMED_CPU_FIGURES.items() if getattr(params, k) in (None, ())}
    changes = {**missing, **FORCED_CPU_FIGURES}
    params = dataclasses.replace(params, **changes) if changes else params
    factor, first_touch = FIRST_TOUCH_SCALE["factor"], params.first_touch_seconds_per_byte
    if factor != 1.0 and first_touch is not None:
        params = dataclasses.replace(params, first_touch_seconds_per_byte=first_touch * factor)
    return params


def one_thread_first_touch(data: Mapping[str, Any]) -> float:
    """The median first-touch figure of a saved run's one-thread float32 calibrations."""
    figure = median_first_touch(setting_records(data, "float32", 1))
    if figure is None:
        raise InputError("the run has no one-thread calibration with a first-touch figure")
    return figure


def setting_records(data: Mapping[str, Any], dtype: str, threads: int) -> list[Mapping[str, Any]]:
    """Every probe record of a saved run's calibrations in one setting."""
    return [
        r
        for c in data["calibrations"]
        if c["dtype"] == dtype and c["threads"] == threads
        for r in c["probes"]
    ]


def calibration_params(data: Mapping[str, Any], dtype: str, threads: int) -> DeviceParams:
    """The parameters of a saved run's calibrations in one setting: per probe, the median record
    (:func:`median_probe_records`)."""
    return params_from(median_probe_records(setting_records(data, dtype, threads)))


def cache_ladder_of(data: Mapping[str, Any]) -> tuple[tuple[float, float], ...]:
    """The cache ladder of a saved run's main calibrations (float32, its thread count)."""
    params = calibration_params(data, "float32", data["settings"]["threads"])
    ladder = params.bandwidth_ratio_by_working_set
    if not ladder:
        raise ValueError("its calibrations have no cache ladder (a run before the probe had one)")
    return ladder


def with_modelled_faults(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run whose latencies are what each round would have taken had its forwards
    page-faulted exactly the bytes the model charges (a diagnostic, ``--as-if-modelled-faults``).

    Each round's latency moves by the price of its measured fault bytes per forward (the round's,
    else the point's median) less the charged ones (the fresh outputs of
    ``predict.FRESH_MAPPING_MIN_BYTES`` or more where the calibration charges first touch, else
    none), at the main calibrations' median first-touch figure. Under glibc's defaults how
    much one point faults varies from round to round with the heap's history (outputs of any
    size: a large request is served from free heap space when there is some), so no model of
    the point can charge it: this scores the model on the rest.
    """
    threads = data["settings"]["threads"]
    price = median_first_touch(setting_records(data, "float32", threads))
    if price is None:
        raise InputError("the run's calibrations have no first-touch figure to price faults at")
    charges = calibration_params(data, "float32", threads).first_touch_seconds_per_byte
    architectures = architectures_of(data)
    points = []
    for point in data["points"]:
        cost = forward_cost(
            architectures[point["model"]], point["batch_size"], point["seq_len"], point["dtype"]
        )
        charged = sum(fresh_mapped_bytes(k) for k in cost.kernels) if charges else 0.0

        rounds = []
        for r in point["rounds"]:
            faults = r.get("page_fault_bytes_per_forward")
            if faults is None:  # a profiled round: the point's median
                faults = point.get("page_fault_bytes_per_forward")
            latency = r["latency_seconds"]
            if faults is not None:
                latency -= price * (faults - charged)
            rounds.append({**r, "latency_seconds": latency})
        latency = statistics.median(r["latency_seconds"] for r in rounds)
        points.append({**point, "latency_seconds": latency, "rounds": rounds})
    return {**data, "points": points}


class Scorer:
    """Predictions of saved points under one set of device parameters."""

    def __init__(self, data: Mapping[str, Any], stat: str = "median") -> None:
        self.data = data
        self.stat = stat
        self.architectures = architectures_of(data)
        self.points = {
            PointKey(p["model"], p["batch_size"], p["seq_len"], p["dtype"], p["threads"]): p
            for p in data["points"]
        }

    def measured(self, key: PointKey) -> float:
        """The point's ground truth: ``stat`` over the rounds' latencies (median by default)."""
        point = self.points[key]
        if self.stat == "median":
            return float(point["latency_seconds"])
        return float(STATISTICS[self.stat]([r["latency_seconds"] for r in point["rounds"]]))

    def error(self, params: DeviceParams, key: PointKey) -> float:
        predicted = predict(
            self.architectures[key.model], params, key.batch_size, key.seq_len, key.dtype
        ).latency_seconds
        return throughput_error(self.measured(key), predicted)

    def refit(self, params: DeviceParams, keys: Sequence[PointKey]) -> fit.FitReport:
        points = [
            fit.MeasuredPoint(
                k.model,
                k.batch_size,
                k.seq_len,
                k.dtype,
                self.measured(k),
                self.points[k].get("framework_overhead_ratio"),
            )
            for k in keys
            if k in self.points
        ]
        return fit.refit(params, points, self.architectures)

    def errors(
        self, params: DeviceParams, keys: Sequence[PointKey], exclude: Sequence[PointKey] = ()
    ) -> dict[PointKey, float]:
        """The throughput error of each measured key not in ``exclude``."""
        return {
            key: self.error(params, key)
            for key in keys
            if key not in exclude and key in self.points
        }

    def table(
        self, params: DeviceParams, keys: Sequence[PointKey], exclude: Sequence[PointKey] = ()
    ) -> dict[str, Any]:
        """Per batch size: MAPE and the worst point; plus the overall MAPE."""
        return error_table(self.errors(params, keys, exclude))


def error_table(errors: Mapping[PointKey, float]) -> dict[str, Any]:
    """Per batch size: MAPE and the worst point; plus the overall MAPE."""
    rows: dict[str, list[tuple[int, float]]] = {}
    for key, error in errors.items():
        rows.setdefault(str(key.batch_size), []).append((key.seq_len, error))
    table: dict[str, Any] = {}
    for batch, row in rows.items():
        worst = max(row, key=lambda e: abs(e[1]))
        table[batch] = {
            "mape": mape(e for _, e in row),
            "worst_seq_len": worst[0],
            "worst_error": worst[1],
            "points": len(row),
        }
    return {"by_batch": table, "mape": mape(errors.values()), "points": len(errors)}


def best_scale(errors: Mapping[PointKey, float]) -> tuple[float, dict[PointKey, float]]:
    """The one factor on predicted throughput that minimises the MAPE of ``errors``, and the
    errors after it: how far the predicted curve's *shape* is from the measured one, whatever
    its level. No correction that moves the whole curve by one factor can do better.

    With a = 1 + error (measured over predicted throughput), scaling the prediction by c gives
    errors a/c − 1, and Σ|a·u − 1| (u = 1/c) = Σ a·|u − 1/a| is least at the median of 1/a
    weighted by a.
    """
    if not errors:
        return 1.0, {}
    ratios = sorted((1.0 / (1.0 + e), 1.0 + e) for e in errors.values())
    half = sum(w for _, w in ratios) / 2.0
    cumulative = itertools.accumulate(w for _, w in ratios)
    median = next(u for (u, _), total in zip(ratios, cumulative, strict=True) if total >= half)
    scale = 1.0 / median
    return scale, {key: (1.0 + e) / scale - 1.0 for key, e in errors.items()}


def multipliers_theta(report: fit.FitReport) -> list[float]:
    return [math.log(report.multipliers.get(name, 1.0)) for name in fit.FREE_PARAMETERS]


def score(
    data: Mapping[str, Any], stat: str = "median", anchor: str = TWO_POINT_ANCHORS[0]
) -> dict[str, Any]:
    """Every table of the report, from saved measurements and the current performance model;
    ``anchor`` picks the two-point setting's compute-dominated point (``TWO_POINT_ANCHORS``)."""
    s = data["settings"]
    threads, models = s["threads"], s["models"]
    batches, seqs = s["batch_sizes"], s["seq_lens"]
    scorer = Scorer(data, stat)
    calibrations = data["calibrations"]

    def calibs(dtype: str, t: int) -> list[Mapping[str, Any]]:
        return [c for c in calibrations if c["dtype"] == dtype and c["threads"] == t]

    def base(dtype: str, t: int) -> DeviceParams:
        return calibration_params(data, dtype, t)

    main = base("float32", threads)
    grid = {
        m: [PointKey(m, b, q, "float32", threads) for b in batches for q in seqs] for m in models
    }
    k_points = {k: fit_points(batches, seqs, k) for k in (4, 8)}
    largest_work, smallest_work = two_points(batches, seqs)
    result: dict[str, Any] = {
        "statistic": stat,
        "calibration": main.to_dict(),
        "accuracy": {},
        # each model's two points are in its two_point table: the compute-dominated one may
        # differ per model (module docstring)
        "fit_points": {
            "two_point_anchor": anchor,
            "refit_k4": k_points[4],
            "refit_k8": k_points[8],
            "k_points_on_grid": sorted(
                {p for k in (4, 8) for p in k_points[k] if p[0] in batches and p[1] in seqs}
            ),
        },
    }

    fitted: dict[str, dict[str, DeviceParams]] = {}
    for model in models:
        keys = grid[model]
        compute_point = (
            compute_dominated_point(scorer.architectures[model], main, batches, seqs)
            if anchor == "no-first-touch"
            else largest_work
        )
        two = [compute_point, smallest_work]
        two_keys = [PointKey(model, b, q, "float32", threads) for b, q in two]
        per: dict[str, Any] = {}
        fitted[model] = {"probes": main}
        probes_errors = scorer.errors(main, keys)
        per["probes"] = error_table(probes_errors)
        scale, scaled = best_scale(probes_errors)
        per["probes_best_scale"] = {**error_table(scaled), "scale": scale}
        report = scorer.refit(main, two_keys)
        fitted[model]["two_point"] = report.params
        per["two_point"] = scorer.table(report.params, keys, exclude=two_keys)
        per["two_point"]["multipliers"] = report.multipliers
        per["two_point"]["fit_points"] = two
        # the anchors' own errors from the probes (compute, then memory-dominated): the refit
        # carries them to every point
        per["two_point"]["anchor_probes_errors"] = [probes_errors.get(k) for k in two_keys]
        for k in (4, 8):
            k_keys = [PointKey(model, b, q, "float32", threads) for b, q in k_points[k]]
            report = scorer.refit(main, k_keys)
            fitted[model][f"refit_k{k}"] = report.params
            per[f"refit_k{k}"] = scorer.table(report.params, keys, exclude=k_keys)
            per[f"refit_k{k}"]["multipliers"] = report.multipliers
        report = scorer.refit(main, keys)
        fitted[model]["refit_all"] = report.params
        per["refit_all"] = scorer.table(report.params, keys)
        per["refit_all"]["multipliers"] = report.multipliers
        result["accuracy"][model] = per

    # noise floor: the even rounds' medians against the odd rounds' (two independent sweeps)
    noise: dict[str, Any] = {}
    for model in models:
        rows: dict[str, list[float]] = {}
        for key in grid[model]:
            halves = split_halves(scorer.points[key], stat) if key in scorer.points else None
            if halves:
                rows.setdefault(str(key.batch_size), []).append(throughput_error(*halves))
        if rows:
            noise[model] = {
                "by_batch": {b: mape(v) for b, v in rows.items()},
                "mape": mape(e for v in rows.values() for e in v),
            }
    result["noise_floor"] = noise
    other_run = data.get("other_run_points")
    if other_run:
        # a second, separate run of the same grid (--noise-against): drift between runs included
        theirs = {
            PointKey(p["model"], p["batch_size"], p["seq_len"], p["dtype"], p["threads"]): p
            for p in other_run
        }
        between: dict[str, Any] = {}
        for model in models:
            rows = {}
            for key in grid[model]:
                if key in theirs and key in scorer.points:
                    rows.setdefault(str(key.batch_size), []).append(
                        throughput_error(scorer.measured(key), theirs[key]["latency_seconds"])
                    )
            if rows:
                between[model] = {
                    "by_batch": {b: mape(v) for b, v in rows.items()},
                    "mape": mape(e for v in rows.values() for e in v),
                }
        result["noise_floor_between_runs"] = between

    # the probes-only error under each calibration on its own (how much one calibration varies)
    spread = []
    for c in calibs("float32", threads):
        try:
            params = params_from(c["probes"])
        except Exception as error:  # a failed probe in one calibration
            spread.append({"round": c.get("round"), "error": str(error)})
            continue
        spread.append(
            {
                "round": c.get("round"),
                "mape": mape(
                    scorer.error(params, k) for m in models for k in grid[m] if k in scorer.points
                ),
                "compute_flops_per_second": params.compute_flops_per_second.get("float32"),
                "memory_bandwidth_bytes_per_second": params.memory_bandwidth_bytes_per_second,
                "dispatch_seconds": params.dispatch_seconds,
            }
        )
    result["probes_per_calibration"] = spread
    # how fast each round ran: per round, the median over the grid's points of that round's
    # latency over the point's median (a calibration's probes read the machine at one moment,
    # a round's forwards over minutes)
    by_round: dict[int, list[float]] = {}
    for model in models:
        for key in grid[model]:
            point = scorer.points.get(key)
            for i, r in enumerate(point["rounds"] if point else ()):
                by_round.setdefault(i, []).append(r["latency_seconds"] / point["latency_seconds"])
    result["round_latency_ratio"] = [statistics.median(by_round[i]) for i in sorted(by_round)]

    # encoders not used to fit: refit on one model's points, predict the others
    source = cross_model(models)
    transfer: dict[str, Any] = {}
    targets = [m for m in models if m != source]
    if s.get("tiny"):
        targets.append(TINY_NAME)
    for target in targets:
        if target == TINY_NAME:
            keys = [
                PointKey(TINY_NAME, b, q, "float32", threads)
                for b, q in cross_subset(batches, seqs)
            ]
        else:
            keys = grid[target]
        transfer[target] = {
            name: scorer.table(fitted[source][name], keys)
            for name in ("probes", "two_point", "refit_k8", "refit_all")
        }
    result["other_encoders"] = {"fitted_on": source, "targets": transfer}

    if s.get("cross"):
        result["cross_settings"] = cross_settings(scorer, s, base)
    return result


def cross_settings(scorer: Scorer, s: Mapping[str, Any], base: Any) -> list[dict[str, Any]]:
    """Calibrate in one setting, predict another, on the cross subset of one model.

    For a target setting Y and a source setting X, three predictions of Y's points:
    ``y_probes`` (Y's own probes, nothing measured), ``x_refit_as_is`` (X's probes refitted on
    X's points, used unchanged in Y: shows the settings really differ) and
    ``y_probes_x_multipliers`` (Y's probes with the efficiency multipliers X's refit learned:
    whether what a refit learns carries over).
    """
    threads = s["threads"]
    other = 1 if threads != 1 else 2
    model = cross_model(s["models"])
    subset = cross_subset(s["batch_sizes"], s["seq_lens"])
    settings = {
        f"float32/{threads}t": ("float32", threads),
        f"float32/{other}t": ("float32", other),
        f"bfloat16/{threads}t": ("bfloat16", threads),
    }
    pairs = [
        (f"float32/{other}t", f"float32/{threads}t"),
        (f"float32/{threads}t", f"float32/{other}t"),
        (f"float32/{threads}t", f"bfloat16/{threads}t"),
        (f"bfloat16/{threads}t", f"float32/{threads}t"),
    ]
    out = []
    for x_name, y_name in pairs:
        x_dtype, x_threads = settings[x_name]
        y_dtype, y_threads = settings[y_name]
        x_keys = [PointKey(model, b, q, x_dtype, x_threads) for b, q in subset]
        y_keys = [PointKey(model, b, q, y_dtype, y_threads) for b, q in subset]
        x_params = base(x_dtype, x_threads)
        y_params = base(y_dtype, y_threads)
        x_report = scorer.refit(x_params, x_keys)
        carried = fit.apply_multipliers(y_params, multipliers_theta(x_report))
        row: dict[str, Any] = {"from": x_name, "to": y_name, "model": model, "points": len(y_keys)}
        row["y_probes"] = scorer.table(y_params, y_keys)["mape"]
        if y_dtype in x_report.params.compute_flops_per_second:
            row["x_refit_as_is"] = scorer.table(x_report.params, y_keys)["mape"]
        else:
            row["x_refit_as_is"] = None  # X never measured Y's dtype: nothing to use as is
        row["y_probes_x_multipliers"] = scorer.table(carried, y_keys)["mape"]
        row["y_refit_in_sample"] = scorer.table(scorer.refit(y_params, y_keys).params, y_keys)[
            "mape"
        ]
        row["x_multipliers"] = x_report.multipliers
        out.append(row)
    return out


# --- the report -----------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:.1f}%")
    )


def render(data: Mapping[str, Any], scores: Mapping[str, Any]) -> str:
    """The tables as Markdown (pasted into BENCHMARKS.md)."""
    s = data["settings"]
    m = data["machine"]
    c = scores["calibration"]
    lines = [
        f"accuracy: {m.get('cpu_model')}, torch {m.get('torch_version')}, "
        f"{s['threads']} threads, float32, {s['rounds']} rounds "
        f"({scores.get('statistic', 'median')} per point), measured {m.get('date')}, "
        f"load average at start {m.get('load_average', ['?'])[0]:.2f}, "
        f"sweep {data.get('duration_seconds', 0) / 60:.1f} min",
        "",
        f"probes' calibration: W {c['memory_bandwidth_bytes_per_second'] / 1e9:.1f} GB/s, "
        f"elementwise share ρ {c['elementwise_bandwidth_ratio']:.2f}, first touch "
        f"{(c.get('first_touch_seconds_per_byte') or 0.0) * 1e9:.3f} ns/B",
        "",
    ]
    batches = [str(b) for b in s["batch_sizes"]]
    for model, per in scores["accuracy"].items():
        noise = scores["noise_floor"].get(model, {})
        lines.append(f"**{model}**: MAPE of throughput per batch size (worst point: seq, error)")
        lines.append("")
        anchors = per["two_point"]["fit_points"]
        lines.append(
            f"two_point fitted on {[tuple(a) for a in anchors]} (batch, seq; compute-dominated "
            f"point: {scores['fit_points']['two_point_anchor']})"
        )
        lines.append("")
        lines.append("| setting | " + " | ".join(f"b={b}" for b in batches) + " | all |")
        lines.append("|---|" + "---|" * (len(batches) + 1))
        for name in (*SETTINGS, "probes_best_scale"):
            table = per[name]["by_batch"]
            cells = []
            for b in batches:
                row = table.get(b)
                cells.append(
                    "–"
                    if row is None
                    else f"{pct(row['mape'])} ({row['worst_seq_len']}: "
                    f"{100 * row['worst_error']:+.0f}%)"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {pct(per[name]['mape'])} |")
        if noise:
            cells = [pct(noise["by_batch"].get(b)) for b in batches]
            lines.append("| noise floor | " + " | ".join(cells) + f" | {pct(noise['mape'])} |")
        between = (scores.get("noise_floor_between_runs") or {}).get(model)
        if between:
            cells = [pct(between["by_batch"].get(b)) for b in batches]
            lines.append(
                "| noise floor, two runs | " + " | ".join(cells) + f" | {pct(between['mape'])} |"
            )
        lines.append("")
        shape = per["probes_best_scale"]
        anchor_errors = per["two_point"]["anchor_probes_errors"]
        if None not in anchor_errors:  # both anchors measured
            lines.append(
                f"probes_best_scale: the probes' curve times {shape['scale']:.3f} (its shape's "
                "error); the two-point anchors' own errors from the probes: "
                + ", ".join(
                    f"{tuple(point)} {100 * error:+.0f}%"
                    for point, error in zip(anchors, anchor_errors, strict=True)
                )
            )
            lines.append("")
    spread = scores.get("probes_per_calibration") or []
    if spread:
        lines.append(
            "probes-only MAPE under each calibration on its own: "
            + ", ".join(pct(c.get("mape")) for c in spread if "mape" in c)
            + " (compute probe "
            + ", ".join(
                f"{c['compute_flops_per_second'] / 1e9:.0f}"
                for c in spread
                if c.get("compute_flops_per_second")
            )
            + " GFLOP/s)"
        )
        lines.append(
            "each round's latencies over the points' medians (median over the grid): "
            + ", ".join(f"{r:.3f}" for r in scores["round_latency_ratio"])
        )
        lines.append("")
    other = scores.get("other_encoders") or {}
    if other.get("targets"):
        lines.append(f"**encoders not used to fit** (refit on {other['fitted_on']}'s points)")
        lines.append("")
        lines.append("| target | probes | two_point | refit_k8 | refit_all |")
        lines.append("|---|---|---|---|---|")
        for target, tables in other["targets"].items():
            lines.append(
                f"| {target} | "
                + " | ".join(
                    pct(tables[n]["mape"]) for n in ("probes", "two_point", "refit_k8", "refit_all")
                )
                + " |"
            )
        lines.append("")
    cross = scores.get("cross_settings")
    if cross:
        lines.append(f"**cross-setting** ({cross[0]['model']}, {cross[0]['points']} points)")
        lines.append("")
        lines.append(
            "| from → to | target's probes alone | source refit as is | "
            "target's probes + source multipliers | target refit in-sample |"
        )
        lines.append("|---|---|---|---|---|")
        for row in cross:
            lines.append(
                f"| {row['from']} → {row['to']} | {pct(row['y_probes'])} | "
                f"{pct(row['x_refit_as_is'])} | {pct(row['y_probes_x_multipliers'])} | "
                f"{pct(row['y_refit_in_sample'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def detail(data: Mapping[str, Any], scores: Mapping[str, Any]) -> str:
    """Every measured point against the probes-only and the in-sample refit prediction."""
    scorer = Scorer(data, scores.get("statistic", "median"))
    main = DeviceParams.from_dict(scores["calibration"])
    lines = [
        f"{'model':22} {'b':>3} {'s':>4} {'dtype':8} {'t':>1} {'measured_ms':>11} "
        f"{'probes':>7} {'overhead':>8} {'rounds spread':>13}"
    ]
    for key, point in sorted(scorer.points.items(), key=lambda kv: dataclasses.astuple(kv[0])):
        if (
            key.dtype not in main.compute_flops_per_second
            or key.threads != data["settings"]["threads"]
        ):
            continue
        latencies = [r["latency_seconds"] for r in point["rounds"]]
        spread = (max(latencies) - min(latencies)) / point["latency_seconds"]
        overhead = point.get("framework_overhead_ratio")
        lines.append(
            f"{key.model:22} {key.batch_size:3} {key.seq_len:4} {key.dtype:8} {key.threads:1} "
            f"{1e3 * point['latency_seconds']:11.1f} {100 * scorer.error(main, key):+6.0f}% "
            f"{'' if overhead is None else f'{100 * overhead:7.0f}%':>8} {100 * spread:12.0f}%"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny grid, one round (test suite)")
    parser.add_argument("--out", metavar="FILE.json", help="write measurements and scores here")
    parser.add_argument("--load", metavar="FILE.json", help="re-score saved measurements")
    parser.add_argument("--models", type=lambda t: [m for m in t.split(",") if m])
    parser.add_argument("--batch-sizes", type=int_list)
    parser.add_argument("--seq-lens", type=int_list)
    parser.add_argument("--rounds", type=int, help="interleaved rounds per point (default 3)")
    parser.add_argument("--calibrations", type=int, help="calibrations per setting (default 3)")
    parser.add_argument("--budget-seconds", type=float, help="timing budget per probe call")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed forwards of the same shape before each timed one (default 1, as the "
        "daemon's worker; 0 times a forward right after other shapes, as sweeps before "
        "accuracy-7 did)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detail", action="store_true", help="also print every point's error")
    parser.add_argument(
        "--stat",
        choices=sorted(STATISTICS),
        default="median",
        help="ground truth per point over the rounds: median (what the daemon reports) or min "
        "(the least contended round, for a loaded machine)",
    )
    parser.add_argument(
        "--noise-against",
        metavar="FILE.json",
        help="another run of the same grid: report the noise floor between the two runs too",
    )
    parser.add_argument(
        "--assume-cpu-figures",
        metavar="FT,TANH,EXP",
        type=lambda text: [float(x) for x in text.split(",")],
        help="first-touch s/B, tanh and exp elements/s for calibrations that lack them",
    )
    parser.add_argument(
        "--assume-cache-ladder",
        metavar="RUN",
        help="a saved run whose calibrations' cache ladder to assume for calibrations without",
    )
    parser.add_argument(
        "--two-point-anchor",
        choices=TWO_POINT_ANCHORS,
        default=TWO_POINT_ANCHORS[0],
        help="the two-point setting's compute-dominated point: the one the probes predict "
        "slowest among those whose predicted time carries no page-fault charge (no-first-touch, "
        "default; on a GPU the largest-work point), or the grid's largest-work point everywhere "
        "(largest-work, the report's rule until 2026-11-30)",
    )
    parser.add_argument(
        "--without-cache-ladder",
        action="store_true",
        help="score as if no calibration had measured the cache ladder (what it is worth)",
    )
    parser.add_argument(
        "--streamed-square",
        action="store_true",
        help="score with the streamed product's 768 -> 768 products alone, the compute probe's "
        "rule before it streamed whole encoder layers (runs from accuracy-15 on)",
    )
    parser.add_argument(
        "--first-touch-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="score with every calibration's first-touch figure times F (a what-if: the price "
        "a forward's page faults pay at two threads is about 0.75 x the probe's one-thread "
        "figure here, BENCHMARKS.md)",
    )
    parser.add_argument(
        "--elementwise-ratio",
        type=float,
        metavar="RHO",
        help="score with every calibration's elementwise bandwidth ratio (the share of the "
        "copy rate an elementwise kernel runs at) set to RHO instead of what the probes give "
        "(the memory probe's elementwise chain under an allocator that hands large blocks back, "
        "else models.fit.DEFAULT_CPU_ELEMENTWISE_BANDWIDTH_RATIO, 0.5): a what-if, BENCHMARKS.md",
    )
    parser.add_argument(
        "--large-outputs-reused",
        action="store_true",
        help="score as if every calibration's allocator check had found freed large blocks "
        "handed back (no page-fault charge): runs measured before the memory probe checked, "
        "under an allocator that reuses (accuracy-32-tuned-malloc)",
    )
    parser.add_argument(
        "--first-touch-from-one-thread",
        action="store_true",
        help="score with the first-touch figure of the run's one-thread calibrations (runs whose "
        "probe timed it at torch's thread count: accuracy-16)",
    )
    parser.add_argument(
        "--as-if-modelled-faults",
        action="store_true",
        help="re-score a saved run as if every forward had page-faulted exactly what the model "
        "charges: each round's latency less the price of its measured faults beyond the charged "
        "ones (a diagnostic of what the unmodelled faults under glibc's defaults cost)",
    )
    parser.add_argument("--no-cross", dest="cross", action="store_false", default=None)
    parser.add_argument("--no-tiny", dest="tiny", action="store_false", default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "models": ["distilbert-base"] if quick else list(DEFAULT_MODELS),
        "batch_sizes": [1, 2] if quick else list(DEFAULT_BATCH_SIZES),
        "seq_lens": [16] if quick else list(DEFAULT_SEQ_LENS),
        "rounds": 2 if quick else 3,
        "budget_seconds": 0.05 if quick else 0.3,
        "calibrations": 1 if quick else 3,
        "cross": not quick,
        "tiny": not quick,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = [m for m in args.models if m not in PRESETS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; presets: {', '.join(PRESETS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.assume_cpu_figures is not None and (
        len(args.assume_cpu_figures) != 3 or min(args.assume_cpu_figures) <= 0
    ):
        parser.error("--assume-cpu-figures takes three positive numbers: FT,TANH,EXP")
    if args.elementwise_ratio is not None and not args.elementwise_ratio > 0:
        parser.error(f"--elementwise-ratio must be a positive number, got {args.elementwise_ratio}")
    if not args.first_touch_scale > 0:
        parser.error(f"--first-touch-scale must be a positive number, got {args.first_touch_scale}")
    if args.as_if_modelled_faults and not args.load:
        parser.error("--as-if-modelled-faults re-scores a saved run: give --load FILE.json")
    if args.first_touch_from_one_thread and not args.load:
        parser.error("--first-touch-from-one-thread re-scores a saved run: give --load FILE.json")
    if args.assume_cache_ladder is not None and args.without_cache_ladder:
        parser.error("--assume-cache-ladder and --without-cache-ladder contradict each other")
    if args.assume_cache_ladder is not None:
        try:
            args.assume_cache_ladder = cache_ladder_of(read_json(args.assume_cache_ladder))
        except (OSError, ValueError, KeyError, TypeError, InputError) as error:
            parser.error(f"--assume-cache-ladder {args.assume_cache_ladder}: {error}")
    return args


def scored(args: argparse.Namespace) -> dict[str, Any]:
    """The run ``args`` name (measured now, or ``--load``-ed) under its what-ifs, with its
    ``scores``. A saved run the what-ifs cannot apply to raises InputError."""
    ASSUMED_CPU_FIGURES.clear()
    FORCED_CPU_FIGURES.clear()
    READINGS["streamed_square"] = args.streamed_square
    READINGS["large_outputs_reused"] = args.large_outputs_reused
    FIRST_TOUCH_SCALE["factor"] = args.first_touch_scale
    if args.without_cache_ladder:
        FORCED_CPU_FIGURES["bandwidth_ratio_by_working_set"] = ()
    if args.elementwise_ratio is not None:
        FORCED_CPU_FIGURES["elementwise_bandwidth_ratio"] = args.elementwise_ratio
    if args.assume_cpu_figures:
        names = ("first_touch_seconds_per_byte", "tanh_elements_per_second")
        ASSUMED_CPU_FIGURES.update(
            zip((*names, "exp_elements_per_second"), args.assume_cpu_figures, strict=True)
        )
    if args.assume_cache_ladder:
        ASSUMED_CPU_FIGURES["bandwidth_ratio_by_working_set"] = args.assume_cache_ladder
    data = read_json(args.load) if args.load else measure(args)
    try:
        if args.first_touch_from_one_thread:
            FORCED_CPU_FIGURES["first_touch_seconds_per_byte"] = one_thread_first_touch(data)
        if args.as_if_modelled_faults:
            data = with_modelled_faults(data)
    except (KeyError, TypeError) as error:
        raise InputError(f"the run lacks what the what-if needs ({error})") from None
    if args.noise_against:
        data["other_run_points"] = read_json(args.noise_against)["points"]
    scores = score(data, args.stat, args.two_point_anchor)
    return {**data, "scores": scores}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = scored(args)
    except InputError as error:
        print(f"accuracy: {error}", file=sys.stderr)
        return 2
    if args.out:
        write_json(args.out, data)
    print(render(data, data["scores"]))
    if args.detail:
        print(detail(data, data["scores"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
