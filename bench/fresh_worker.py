"""One model's curve measured as the daemon measures it, a fresh worker per point, against a sweep.

``accuracy.py`` times every point in its own long-lived process, which has built every model
and run every shape before; the daemon spawns a fresh worker for each cycle, which builds the
model and times a few points. Whatever depends on the process's state (the heap glibc has kept,
so whether a forward's mid-size outputs page-fault) can differ between the two. This script
times each grid point of one model of a saved accuracy run in a fresh worker of its own (the
daemon's request, ``exporter.cycle.build_request``, through ``exporter.supervisor.run_worker``;
no calibration), ``--rounds`` interleaved rounds in a new random order each, and reports per
point the saved run's latency, the fresh workers' median and their ratio, and the probes-only
error of the saved run's calibration against each.

    python bench/fresh_worker.py --against bench/results/accuracy-17.json \
        --out bench/results/fresh_worker.json                          # 2 rounds: 10 min
    python bench/fresh_worker.py --load bench/results/fresh_worker.json
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import Scorer, architectures_of, calibration_params
from common import (
    PointKey,
    load_or_measure,
    machine,
    mape,
    read_json,
    stderr_log,
    throughput_error,
)
from scaleprobe.exporter import cycle, supervisor
from scaleprobe.exporter.config import default_config
from scaleprobe.models.predict import predict

SCHEMA = "scaleprobe.bench.fresh_worker/1"
WORKER_TIMEOUT_SECONDS = 1800.0


def grid_keys(against: dict[str, Any], model: str) -> list[PointKey]:
    s = against["settings"]
    return [
        PointKey(model, b, q, "float32", s["threads"])
        for b in s["batch_sizes"]
        for q in s["seq_lens"]
    ]


def fresh_latency(request: dict[str, Any], key: PointKey) -> float:
    """The latency a fresh worker measures for one point of ``request`` (a daemon cycle's)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(key.threads)}
    outcome = supervisor.run_worker(request, timeout_seconds=WORKER_TIMEOUT_SECONDS, env=env)
    result = outcome.result
    entries = result["points"] if outcome.outcome == "ok" and result else []
    if not entries or entries[0]["outcome"] != "ok":
        raise RuntimeError(f"worker for {key.label()}: {outcome.outcome} {outcome.message}")
    return float(entries[0]["latency_seconds"])


def measure(against_path: str, model: str, rounds: int, seed: int) -> dict[str, Any]:
    against = read_json(against_path)
    keys = grid_keys(against, model)
    config, architectures = default_config(devices=("cpu",)), architectures_of(against)
    requests = {}
    for key in keys:
        point = cycle.PlannedPoint(key.model, key.batch_size, key.seq_len)
        request = cycle.build_request(
            config, "cpu", "float32", [point], architectures, calibrate=False
        )
        requests[key] = {**request, "budget_seconds": 1e9}
    latencies: dict[PointKey, list[float]] = {key: [] for key in keys}
    order = list(keys)
    for index in range(rounds):
        random.Random(seed + index).shuffle(order)
        for key in order:
            latencies[key].append(fresh_latency(requests[key], key))
        stderr_log(f"round {index + 1}/{rounds} done")
    return {
        "schema": SCHEMA,
        "machine": machine(),
        "against": against_path,
        "model": model,
        "rounds": rounds,
        "points": [
            {"batch_size": k.batch_size, "seq_len": k.seq_len, "latencies_seconds": latencies[k]}
            for k in keys
        ],
    }


def report(data: dict[str, Any]) -> str:
    against = read_json(data["against"])
    threads = against["settings"]["threads"]
    scorer = Scorer(against)
    params = calibration_params(against, "float32", threads)
    lines = [
        f"{data['model']}, {threads} threads: each point in a fresh worker ({data['rounds']} "
        f"rounds, median) against {data['against']} (one long-lived process)",
        "",
        "| batch × seq | sweep ms | fresh workers ms | fresh / sweep | probes' error: sweep | "
        "fresh |",
        "|---|---|---|---|---|---|",
    ]
    errors: dict[str, list[float]] = {"sweep": [], "fresh": []}
    ratios = []
    for point in data["points"]:
        key = PointKey(data["model"], point["batch_size"], point["seq_len"], "float32", threads)
        sweep = scorer.measured(key)
        fresh = statistics.median(point["latencies_seconds"])
        architecture = scorer.architectures[key.model]
        predicted = predict(architecture, params, key.batch_size, key.seq_len, "float32")
        e_sweep = throughput_error(sweep, predicted.latency_seconds)
        e_fresh = throughput_error(fresh, predicted.latency_seconds)
        errors["sweep"].append(e_sweep)
        errors["fresh"].append(e_fresh)
        ratios.append(fresh / sweep)
        lines.append(
            f"| {key.batch_size} × {key.seq_len} | {1e3 * sweep:.1f} | {1e3 * fresh:.1f} | "
            f"{fresh / sweep:.3f} | {100 * e_sweep:+.0f}% | {100 * e_fresh:+.0f}% |"
        )
    lines += [
        "",
        f"fresh / sweep: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}–"
        f"{max(ratios):.3f}; probes-only MAPE {100 * mape(errors['sweep']):.1f}% against the "
        f"sweep, {100 * mape(errors['fresh']):.1f}% against the fresh workers",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", metavar="RUN.json", help="the saved accuracy run")
    parser.add_argument("--model", default="bert-base", help="a model of that run (bert-base)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", metavar="FILE.json", help="write the latencies here")
    parser.add_argument("--load", metavar="FILE.json", help="print a saved run")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.load and not args.against:
        parser.error("give --against RUN.json (a saved accuracy run) or --load FILE.json")

    def measured() -> dict[str, Any]:
        against = read_json(args.against)
        if args.model not in against["configs"]:
            parser.error(
                f"{args.against} has no model {args.model!r}; it has "
                f"{', '.join(against['configs'])}"
            )
        return measure(args.against, args.model, args.rounds, args.seed)

    return load_or_measure("fresh_worker", args.load, args.out, measured, report)


if __name__ == "__main__":
    sys.exit(main())
