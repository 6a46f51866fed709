"""What a sweep's small forwards imply for the host cost between linear layers, beside the probe.

The model charges a CPU forward's host work at ``κ`` times the warm per-op cost
(``cold_host_ratio``, the dispatch probe's tiny encoder with and without a base layer's product
before each linear layer; ``docs/model.md``). A host-bound point of a saved accuracy run says
what ``κ`` its forwards paid: its measured latency less the model's device time, over the model's
warm host time. This script prints, per saved run, the probe's ``κ`` for the run's thread count
and the ``κ`` that the small points of DistilBERT and BERT imply (1 × 16, 2 × 16, 1 × 32: host
work 10-25% of the latency there, so the figure carries the device part's error times 4-9).

    python bench/host_ratio.py bench/results/accuracy-1[2-9].json bench/results/accuracy-2?.json
    python bench/host_ratio.py bench/results/accuracy-{7,8,9,10,11,12}-1thread.json

No torch: it re-reads saved runs with the current performance model (``accuracy.py --load``'s
calibration rules). Runs before ``accuracy-7-1thread`` and ``accuracy-8`` predate the probe's cold
reading (their probe column reads 1.00) and were timed without a warm-up forward: their implied
figures say little.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import PointKey, Scorer, calibration_params
from common import read_json
from scaleprobe.models.costs import forward_cost
from scaleprobe.models.predict import cold_host_scale, time_forward

MODELS = ("distilbert-base", "bert-base")
POINTS = ((1, 16), (2, 16), (1, 32))


def implied_ratios(data: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's κ and, per small point, the κ its measured forward implies."""
    threads = data["settings"]["threads"]
    scorer = Scorer(data)
    params = calibration_params(data, "float32", threads)
    implied: dict[str, float] = {}
    for model in MODELS:
        if model not in scorer.architectures:
            continue
        for batch, seq in POINTS:
            key = PointKey(model, batch, seq, "float32", threads)
            if key not in scorer.points:
                continue
            cost = forward_cost(scorer.architectures[model], batch, seq, "float32")
            timing = time_forward(cost, params)
            warm_host = timing.host_seconds / cold_host_scale(cost, params)
            device = timing.latency_seconds - timing.host_seconds
            implied[f"{model} {batch}x{seq}"] = (scorer.measured(key) - device) / warm_host
    return {
        "threads": threads,
        "probe": params.cold_host_ratio,
        "implied": implied,
        "implied_median": statistics.median(implied.values()) if implied else None,
    }


def render(name: str, row: Mapping[str, Any]) -> str:
    points = " ".join(f"{k} {v:.2f}" for k, v in row["implied"].items())
    median = row["implied_median"]
    median_text = f"{median:.2f}" if median is not None else "-"
    return f"{name}: {row['threads']}t probe {row['probe']:.2f} implied {median_text} ({points})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The host-cost ratio a saved accuracy run's small forwards imply, beside the "
        "dispatch probe's.",
    )
    parser.add_argument(
        "runs", nargs="+", help="saved accuracy runs (bench/results/accuracy-*.json)"
    )
    args = parser.parse_args(argv)
    for run in args.runs:
        try:
            row = implied_ratios(read_json(run))
        except (OSError, ValueError, KeyError) as error:
            print(f"host_ratio.py: {run}: not a readable accuracy run ({error})", file=sys.stderr)
            return 2
        print(render(Path(run).name, row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
