"""What probing costs the device: one calibration and one daemon cycle against measuring the curve.

Runs real daemon cycles (``scaleprobe.exporter.cycle.run_cycle`` with the real worker subprocess,
the daemon's default CPU configuration unless ``--config`` names one), then one worker run that
measures every point of the configured grid the way a cycle measures a point (the full sweep:
what measuring the curve itself costs with the same instrument). Reports, from the worker's own
``device_seconds`` accounting:

- the device time of one calibration (the three probes) and of one cycle (probes + rotating
  points), and the wall time of a cycle (worker start, torch import and model builds included);
- calibration / full sweep (target ≤ 2%), cycle / full sweep;
- the duty cycle at the configured interval: cycle device time / ``schedule.interval_seconds``;
- with ``--accuracy FILE``, the calibration against one pass of the accuracy benchmark's grid.

    python bench/probe_cost.py --out bench/results/probe_cost.json       # about 3-5 min
    python bench/probe_cost.py --quick --out /tmp/probe_cost.json        # tiny model (test suite)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TINY_CONFIG, TINY_NAME, machine, read_json, stderr_log, write_json
from scaleprobe.exporter import cycle as cycle_module
from scaleprobe.exporter import supervisor
from scaleprobe.exporter.config import Config, ModelConfig, default_config, load_config

SCHEMA = "scaleprobe.bench.probe_cost/1"
TARGET_CALIBRATION_SHARE = 0.02


def quick_config(directory: Path) -> Config:
    """The default CPU config cut down to one tiny non-preset model at one point."""
    model_dir = directory / TINY_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(TINY_CONFIG))
    return dataclasses.replace(
        default_config(devices=("cpu",)),
        models=(ModelConfig(TINY_NAME, str(model_dir), 1, 16),),
        batch_sizes=(1,),
        seq_lens=(16,),
        points_per_cycle=1,
    )


def probe_seconds(result: Mapping[str, Any]) -> float:
    return float(sum(p.get("device_seconds") or 0.0 for p in result.get("probes", [])))


def run_cycles(config: Config, count: int) -> list[dict[str, Any]]:
    """``count`` consecutive daemon cycles on the CPU; each carries its worker's accounting."""
    outcomes: list[Any] = []

    def capture(request: Mapping[str, Any], **kwargs: Any) -> Any:
        outcome = supervisor.run_worker(request, **kwargs)
        outcomes.append(outcome)
        return outcome

    previous = None
    cycles = []
    for index in range(count):
        started = time.monotonic()
        result = cycle_module.run_cycle(config, "cpu", previous, run_worker=capture)
        wall = time.monotonic() - started
        outcome = outcomes[-1]
        document = outcome.result or {}
        points = document.get("points", [])
        cycles.append(
            {
                "cycle": index,
                "outcome": result.outcome,
                "reason": result.reason or outcome.message,
                "wall_seconds": wall,
                "worker_duration_seconds": document.get("duration_seconds"),
                "device_seconds": document.get("device_seconds"),
                "calibration_device_seconds": probe_seconds(document),
                "probes": {
                    p["probe"]: {
                        "device_seconds": p.get("device_seconds"),
                        "duration_seconds": p.get("duration_seconds"),
                    }
                    for p in document.get("probes", [])
                },
                "points": [
                    {
                        "model": p["model"],
                        "batch_size": p["batch_size"],
                        "seq_len": p["seq_len"],
                        "outcome": p["outcome"],
                        "device_seconds": p.get("device_seconds"),
                    }
                    for p in points
                ],
            }
        )
        stderr_log(
            f"cycle {index + 1}/{count}: {result.outcome}, {wall:.1f} s wall, "
            f"{document.get('device_seconds', 0):.1f} device s"
        )
        previous = result.state
    return cycles


def full_sweep(config: Config) -> dict[str, Any]:
    """Every grid point of every model, each measured as a cycle measures a point, no budget."""
    architectures = cycle_module.load_architectures(config)
    dtype = config.dtype_for("cpu")
    points = [
        cycle_module.PlannedPoint(m.name, b, s) for m in config.models for b, s in config.grid()
    ]
    request = cycle_module.build_request(
        config, "cpu", dtype, points, architectures, calibrate=False
    )
    request["budget_seconds"] = 1e9
    outcome = supervisor.run_worker(request, timeout_seconds=7200)
    if outcome.outcome != "ok" or outcome.result is None:
        raise RuntimeError(f"full sweep worker {outcome.outcome}: {outcome.message}")
    document = outcome.result
    measured = [p for p in document["points"] if p["outcome"] == "ok"]
    return {
        "points": len(points),
        "points_ok": len(measured),
        "device_seconds": document["device_seconds"],
        "worker_duration_seconds": document["duration_seconds"],
        "single_forward_seconds": sum(p["latency_seconds"] for p in measured),
    }


def accuracy_pass_seconds(path: str) -> dict[str, Any]:
    """Device seconds of the accuracy benchmark's first round over its grid (each point one call
    of ``scaleprobe.probes.model.run``, profiling included, with the sweep's short timing budget),
    and the sum of one forward per grid point (the least any measurement of the curve costs)."""
    data = read_json(path)
    s = data["settings"]
    rounds: dict[int, float] = {}
    grid = {(m, b, q) for m in s["models"] for b in s["batch_sizes"] for q in s["seq_lens"]}
    for point in data["points"]:
        key = (point["model"], point["batch_size"], point["seq_len"])
        if key not in grid or point["dtype"] != "float32" or point["threads"] != s["threads"]:
            continue
        for r in point["rounds"]:
            rounds[r["round"]] = rounds.get(r["round"], 0.0) + r["device_seconds"]
    single = sum(
        p["latency_seconds"]
        for p in data["points"]
        if (p["model"], p["batch_size"], p["seq_len"]) in grid
        and p["dtype"] == "float32"
        and p["threads"] == s["threads"]
    )
    return {
        "file": path,
        "points": len(grid),
        "round_device_seconds": rounds.get(0),
        "single_forward_seconds": single,
    }


def summarise(document: Mapping[str, Any]) -> dict[str, Any]:
    cycles = document["cycles"]
    ok = [c for c in cycles if c["outcome"] == "ok"]
    if not ok:
        raise RuntimeError("no cycle succeeded: " + "; ".join(c["reason"] for c in cycles))
    calibration = statistics.median(c["calibration_device_seconds"] for c in ok)
    cycle_device = statistics.median(c["device_seconds"] for c in ok)
    cycle_wall = statistics.median(c["wall_seconds"] for c in ok)
    sweep = document["full_sweep"]
    interval = document["config"]["interval_seconds"]
    summary = {
        "calibration_device_seconds": calibration,
        "cycle_device_seconds": cycle_device,
        "cycle_wall_seconds": cycle_wall,
        "full_sweep_device_seconds": sweep["device_seconds"],
        "full_sweep_single_forward_seconds": sweep["single_forward_seconds"],
        "calibration_share_of_sweep_ratio": calibration / sweep["device_seconds"],
        "calibration_share_of_single_forwards_ratio": calibration / sweep["single_forward_seconds"],
        "cycle_share_of_sweep_ratio": cycle_device / sweep["device_seconds"],
        "duty_cycle_ratio": cycle_device / interval,
        "duty_cycle_wall_ratio": cycle_wall / interval,
        "target_calibration_share_ratio": TARGET_CALIBRATION_SHARE,
    }
    accuracy = document.get("accuracy_pass")
    if accuracy and accuracy.get("round_device_seconds"):
        summary["calibration_share_of_accuracy_round_ratio"] = (
            calibration / accuracy["round_device_seconds"]
        )
        summary["calibration_share_of_accuracy_single_forwards_ratio"] = (
            calibration / accuracy["single_forward_seconds"]
        )
    return summary


def render(document: Mapping[str, Any]) -> str:
    s = document["summary"]
    c = document["config"]
    m = document["machine"]
    lines = [
        f"probe cost: {m.get('cpu_model')}, torch {m.get('torch_version')}, "
        f"{m.get('torch_threads')} threads, {m['date']}, load {m['load_average'][0]:.2f}; "
        f"config: {c['source']}, {len(c['models'])} models × {len(c['grid'])} grid points, "
        f"{c['points_per_cycle']} points/cycle, interval {c['interval_seconds']:g} s",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| calibration (3 probes), device time | {s['calibration_device_seconds']:.2f} s | |",
        f"| one cycle, device time | {s['cycle_device_seconds']:.2f} s | |",
        f"| one cycle, wall time (spawn, import, builds) | {s['cycle_wall_seconds']:.2f} s | |",
        f"| full sweep of the configured grid, device time | "
        f"{s['full_sweep_device_seconds']:.1f} s | |",
        f"| calibration / full sweep | {100 * s['calibration_share_of_sweep_ratio']:.2f}% "
        f"| ≤ {100 * TARGET_CALIBRATION_SHARE:.0f}% |",
        f"| calibration / one forward per grid point | "
        f"{100 * s['calibration_share_of_single_forwards_ratio']:.1f}% | |",
        f"| cycle / full sweep | {100 * s['cycle_share_of_sweep_ratio']:.1f}% | |",
        f"| duty cycle (cycle device time / interval) | {100 * s['duty_cycle_ratio']:.2f}% | |",
        f"| duty cycle, wall | {100 * s['duty_cycle_wall_ratio']:.2f}% | |",
    ]
    if "calibration_share_of_accuracy_round_ratio" in s:
        lines.append(
            f"| calibration / one round of the accuracy grid | "
            f"{100 * s['calibration_share_of_accuracy_round_ratio']:.2f}% | ≤ 2% |"
        )
        lines.append(
            f"| calibration / one forward per accuracy grid point | "
            f"{100 * s['calibration_share_of_accuracy_single_forwards_ratio']:.2f}% | |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one tiny model at one point")
    parser.add_argument("--config", metavar="FILE.yml", help="daemon config (default: built-in)")
    parser.add_argument("--cycles", type=int, help="consecutive cycles to run (default 3)")
    parser.add_argument("--accuracy", metavar="FILE.json", help="accuracy results to compare")
    parser.add_argument("--out", metavar="FILE.json")
    args = parser.parse_args(argv)
    cycles = args.cycles if args.cycles is not None else (1 if args.quick else 3)
    if cycles < 1:
        parser.error("--cycles must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            config = quick_config(Path(tmp))
        elif args.config:
            config = load_config(args.config)
        else:
            config = default_config(devices=("cpu",))
        info = machine()
        stderr_log(
            f"{cycles} cycles, then the full sweep of "
            f"{len(config.models) * len(config.grid())} points"
        )
        document: dict[str, Any] = {
            "schema": SCHEMA,
            "machine": info,
            "command": " ".join(["python", "bench/probe_cost.py", *sys.argv[1:]]),
            "config": {
                "source": "quick (tiny model)" if args.quick else config.source,
                "models": [m.name for m in config.models],
                "grid": [list(p) for p in config.grid()],
                "points_per_cycle": config.points_per_cycle,
                "cycle_budget_seconds": config.cycle_budget_seconds,
                "interval_seconds": config.interval_seconds,
            },
            "cycles": run_cycles(config, cycles),
            "full_sweep": full_sweep(config),
        }
    if args.accuracy:
        document["accuracy_pass"] = accuracy_pass_seconds(args.accuracy)
    document["summary"] = summarise(document)
    if args.out:
        write_json(args.out, document)
    print(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
