"""Check the performance model against real forward passes on this machine's CPU.

Runs the calibration probes (the worker's own compute, memory and dispatch probes), measures a
handful of real points of the preset encoders in float32 (median of interleaved rounds, so slow
drift of a shared machine does not bias one region), and prints the prediction error:

(a) from the probes alone, (b) after a refit on two points (one compute-, one memory/framework-
dominated), (c) after a refit on four points. Errors are on throughput (|measured/predicted - 1|).

    python bench/model_check.py                      # measure, save, report (about 2-4 minutes)
    python bench/model_check.py --load FILE.json     # re-report saved measurements (no torch work)
    python bench/model_check.py --save FILE.json     # where to save (default /tmp/model_check.json)

This is a scratch benchmark for developing the model form; bench/ (issue 7) holds the full one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scaleprobe.models.architecture import PRESETS
from scaleprobe.models.costs import forward_cost
from scaleprobe.models.fit import MeasuredPoint, ProbeResults, calibrate, refit
from scaleprobe.models.predict import time_forward

POINTS = [
    ("bert-base", 1, 8),
    ("bert-base", 1, 32),
    ("bert-base", 1, 128),
    ("bert-base", 2, 64),
    ("bert-base", 4, 128),
    ("bert-base", 8, 32),
    ("bert-base", 1, 512),
    ("bert-base", 16, 16),
    ("distilbert-base", 1, 8),
    ("distilbert-base", 1, 64),
    ("distilbert-base", 4, 128),
    ("distilbert-base", 2, 256),
    ("distilbert-base", 8, 64),
    ("bigbird-roberta-base", 1, 128),
    ("bigbird-roberta-base", 2, 64),
    ("bigbird-roberta-base", 1, 1024),
]
STAT = "median"
TWO_POINTS = [("bert-base", 8, 32), ("bert-base", 1, 8)]
FOUR_POINTS = [
    ("bert-base", 8, 32),
    ("bert-base", 1, 8),
    ("distilbert-base", 2, 256),
    ("bert-base", 1, 128),
]


def measure(rounds: int) -> dict[str, Any]:
    import torch
    from scaleprobe.probes import compute, dispatch, memory
    from scaleprobe.probes.model import build_model
    from scaleprobe.probes.request import ProbeRequest

    torch.manual_seed(0)
    request = ProbeRequest(device="cpu", dtype="float32")
    probes = []
    for module in (compute, memory, dispatch):
        # best of three runs: other processes on a shared machine only ever slow a probe down
        runs = [module.run(request).to_dict() for _ in range(3)]
        best = (
            min(runs, key=lambda r: r["value"])
            if module is dispatch
            else max(runs, key=lambda r: r["value"])
        )
        probes.append({**best, "outcome": "ok"})
    models = {}
    for name in {p[0] for p in POINTS}:
        # One model per point for BigBird: transformers switches a block-sparse model to full
        # attention for good the first time it sees a short sequence.
        models[name] = build_model(PRESETS[name].to_config(), "float32", "cpu")
    samples: dict[str, list[float]] = {repr(p): [] for p in POINTS}
    inputs = {p: torch.randint(5, 1000, (p[1], p[2])) for p in POINTS}
    sparse = {
        "bigbird-roberta-base": build_model(
            PRESETS["bigbird-roberta-base"].to_config(), "float32", "cpu"
        )
    }
    with torch.inference_mode():
        for point in POINTS:  # warm-up
            (sparse if PRESETS[point[0]].uses_block_sparse(point[2]) else models)[point[0]](
                input_ids=inputs[point]
            )
        for _ in range(rounds):
            for point in POINTS:
                model = (sparse if PRESETS[point[0]].uses_block_sparse(point[2]) else models)[
                    point[0]
                ]
                start = time.perf_counter()
                model(input_ids=inputs[point])
                samples[repr(point)].append(time.perf_counter() - start)
    return {
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
        "probes": probes,
        "points": [
            {
                "model": p[0],
                "batch_size": p[1],
                "seq_len": p[2],
                "samples_seconds": samples[repr(p)],
                "latency_seconds": statistics.median(samples[repr(p)]),
                "min_latency_seconds": min(samples[repr(p)]),
            }
            for p in POINTS
        ],
    }


def report(data: dict[str, Any]) -> dict[str, float]:
    probes = ProbeResults.from_records(data["probes"])
    params = calibrate(probes, memory_bytes=16 * 1024**3)
    print(f"threads={data['threads']} load={data.get('load_average')} date={data.get('date')}")
    print(
        f"probes: compute={probes.compute_flops_per_second} "
        f"bandwidth={probes.memory_bandwidth_bytes_per_second:.3g} "
        f"dispatch={probes.dispatch_seconds:.3g} rates_by_size={probes.rates_by_size}"
    )
    print(
        f"calibrated: half={params.gemm_half_size:.1f} "
        f"ew_ratio={params.elementwise_bandwidth_ratio}"
    )
    key = "min_latency_seconds" if STAT == "min" else "latency_seconds"
    points = [
        MeasuredPoint(p["model"], p["batch_size"], p["seq_len"], "float32", p[key])
        for p in data["points"]
    ]
    architectures = dict(PRESETS)

    def errors(fitted: Any) -> list[float]:
        return [
            p.latency_seconds
            / time_forward(
                forward_cost(architectures[p.model], p.batch_size, p.seq_len, "float32"), fitted
            ).latency_seconds
            - 1
            for p in points
        ]

    def chosen(keys: list[tuple[str, int, int]]) -> list[MeasuredPoint]:
        return [p for p in points if (p.model, p.batch_size, p.seq_len) in keys]

    results = {}
    two = refit(params, chosen(TWO_POINTS), architectures).params
    four = refit(params, chosen(FOUR_POINTS), architectures)
    allfit = refit(params, points, architectures)
    columns = {
        "probes": errors(params),
        "2-point": errors(two),
        "4-point": errors(four.params),
        "all": errors(allfit.params),
    }
    print(
        f"{'model':22} {'b':>3} {'s':>5} {'measured_ms':>11} "
        + " ".join(f"{c:>9}" for c in columns)
    )
    for i, p in enumerate(points):
        spread = data["points"][i]["samples_seconds"]
        noise = (max(spread) - min(spread)) / p.latency_seconds
        print(
            f"{p.model:22} {p.batch_size:3} {p.seq_len:5} {p.latency_seconds * 1e3:11.1f} "
            + " ".join(f"{columns[c][i]:+9.1%}" for c in columns)
            + f"   range {noise:.0%}"
        )
    for name, errs in columns.items():
        results[name] = sum(abs(e) for e in errs) / len(errs)
    print("MAPE (throughput): " + "  ".join(f"{k} {v:.1%}" for k, v in results.items()))
    print(f"4-point multipliers: {four.multipliers}")
    print(f"all-point multipliers: {allfit.multipliers}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load", metavar="FILE.json")
    parser.add_argument("--save", metavar="FILE.json", default="/tmp/model_check.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="per-point statistic (min resists other processes' load)",
    )
    args = parser.parse_args()
    global STAT
    STAT = args.stat
    if args.load:
        with open(args.load) as file:
            data = json.load(file)
    else:
        data = measure(args.rounds)
        with open(args.save, "w") as file:
            json.dump(data, file, indent=1)
    report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
