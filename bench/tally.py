"""Which accuracy targets each saved run meets, model by model: the tallies BENCHMARKS.md quotes.

Each argument is one saved run of ``accuracy.py``, re-scored with the current performance model,
optionally followed by that script's what-ifs in the same quoted argument:

    python bench/tally.py bench/results/accuracy-{29,30,31,33}.json
    python bench/tally.py "bench/results/accuracy-34-tcmalloc.json --elementwise-ratio 1.15"

Per run and model it prints the noise floor (the even rounds' medians against the odd rounds'),
then each of issue #7's targets with its verdict:

- probes alone: the worst batch size's MAPE, met at 10% or less;
- two points: met when every batch size is within 5% or within 1.5 x the floor there;
- refit on 4 points: the MAPE over the grid, met at 3% or less; beside it, the MAPE over the
  floor, and whether the floor itself is above 3% (then the measurement cannot tell 3% apart).

The last lines count the model-runs that meet each target, and of the 4-point misses those whose
floor was above 3%. A run the re-score cannot read is an error (exit code 2).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy
from scaleprobe.models.errors import InputError

PROBES_TARGET = 0.10  # every batch size
TWO_POINT_TARGET = 0.05  # every batch size, or within TWO_POINT_FLOOR_FACTOR x its floor
TWO_POINT_FLOOR_FACTOR = 1.5
REFIT_K4_TARGET = 0.03  # over the grid


def verdicts(scores: Mapping[str, Any], model: str) -> dict[str, Any]:
    """One model's figures in one scored run, and whether each target holds."""
    floor = scores["noise_floor"][model]
    settings = scores["accuracy"][model]
    probes_worst = max(row["mape"] for row in settings["probes"]["by_batch"].values())
    two_point_met = all(
        row["mape"] <= TWO_POINT_TARGET
        or row["mape"] <= TWO_POINT_FLOOR_FACTOR * floor["by_batch"][batch]
        for batch, row in settings["two_point"]["by_batch"].items()
    )
    k4 = settings["refit_k4"]["mape"]
    return {
        "floor": floor["mape"],
        "probes_worst": probes_worst,
        "probes_met": probes_worst <= PROBES_TARGET,
        "two_point": settings["two_point"]["mape"],
        "two_point_met": two_point_met,
        "refit_k4": k4,
        "refit_k4_met": k4 <= REFIT_K4_TARGET,
        "refit_k4_over_floor": k4 / floor["mape"] if floor["mape"] else float("nan"),
        "floor_above_k4_target": floor["mape"] > REFIT_K4_TARGET,
    }


def rescore(spec: str) -> tuple[str, dict[str, Any]]:
    """The run a spec names ("FILE [what-ifs]") and its scores under the current model."""
    words = shlex.split(spec)
    if not words or words[0].startswith("-"):
        raise InputError(f"{spec!r}: give the saved run's file first, then any what-ifs")
    args = accuracy.parse_args(["--load", *words])
    return Path(words[0]).stem, accuracy.scored(args)["scores"]


def render(rows: Sequence[tuple[str, str, Mapping[str, Any]]]) -> str:
    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    def mark(met: bool) -> str:
        return "met" if met else "MISSED"

    lines = [
        "| run | model | noise floor | probes, worst batch | two points | refit k=4 "
        "| k=4 / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, model, v in rows:
        lines.append(
            f"| {run} | {model} | {pct(v['floor'])} "
            f"| {pct(v['probes_worst'])} {mark(v['probes_met'])} "
            f"| {pct(v['two_point'])} {mark(v['two_point_met'])} "
            f"| {pct(v['refit_k4'])} {mark(v['refit_k4_met'])} "
            f"| {v['refit_k4_over_floor']:.2f} |"
        )
    total = len(rows)
    k4_missed = [v for _, _, v in rows if not v["refit_k4_met"]]
    lines += [
        "",
        f"model-runs: {total}",
        f"probes alone met (<= 10% at every batch): {sum(v['probes_met'] for *_, v in rows)}",
        "two points met (<= 5% or <= 1.5 x floor at every batch): "
        f"{sum(v['two_point_met'] for *_, v in rows)}",
        f"refit k=4 met (<= 3%): {total - len(k4_missed)}; of the {len(k4_missed)} missed, "
        f"{sum(v['floor_above_k4_target'] for v in k4_missed)} had a noise floor above 3%",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tally issue #7's accuracy targets over saved accuracy runs.",
        epilog="Each RUN is a saved accuracy.py result, optionally followed by accuracy.py's "
        "what-ifs inside the same quoted argument.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help='"FILE.json [what-ifs]"')
    args = parser.parse_args(argv)
    rows = []
    for spec in args.runs:
        try:
            run, scores = rescore(spec)
        except (InputError, OSError, ValueError, KeyError) as error:
            print(f"tally: {spec}: {error}", file=sys.stderr)
            return 2
        for model in scores["accuracy"]:
            rows.append((run, model, verdicts(scores, model)))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
