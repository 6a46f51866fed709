"""Predictions at large activations before and after the CPU first-touch and transcendental terms.

The accuracy benchmark's stored calibrations predate the probe figures these terms need, so this
measures them afresh: the worker's calibration (twice, median per probe, as ``accuracy.py``
does), then an interleaved sweep of a few BigBird and BERT points at large batch × sequence
(``common.sweep``, the daemon's model probe), and prints each point's throughput error under the
calibration without the new figures ("before": the model as it was) and with them ("after").

    python bench/large_activations.py --rounds 2 --out bench/results/large_activations.json
    python bench/large_activations.py --threads 1 --cpu-time --rounds 1 --out FILE.json
    python bench/large_activations.py --load bench/results/large_activations.json
    python bench/large_activations.py --faults      # page faults per forward against the model

``--cpu-time`` times the forwards by process CPU time (page faults' system time included): with
one torch thread that is the forward's own time, which other processes on a shared machine
barely disturb, where wall time under load says little.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import median_probe_records, params_from
from common import (
    PointKey,
    ProcessCpuTimer,
    calibration,
    machine,
    read_json,
    stderr_log,
    sweep,
    write_json,
)
from scaleprobe.models.architecture import PRESETS
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.predict import predict

POINTS = (
    ("bigbird-roberta-base", 16, 512),
    ("bigbird-roberta-base", 8, 512),
    ("bigbird-roberta-base", 4, 512),
    ("bigbird-roberta-base", 16, 256),
    ("bigbird-roberta-base", 8, 256),
    ("bigbird-roberta-base", 16, 128),
    ("bigbird-roberta-base", 1, 128),
    ("bigbird-roberta-base", 1, 1024),
    ("bert-base", 16, 512),
    ("bert-base", 4, 512),
    ("bert-base", 8, 256),
    ("bert-base", 1, 128),
)
FAULT_POINTS = (
    ("bigbird-roberta-base", 16, 128),
    ("bigbird-roberta-base", 8, 256),
    ("bigbird-roberta-base", 16, 512),
    ("bert-base", 16, 128),
    ("bert-base", 16, 512),
)


def without_new_terms(params: DeviceParams) -> DeviceParams:
    """The calibration as the model used it before the first-touch and transcendental terms."""
    return dataclasses.replace(
        params,
        first_touch_seconds_per_byte=None,
        tanh_elements_per_second=None,
        exp_elements_per_second=None,
    )


def measure(rounds: int, threads: int, cpu_time: bool) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    calibrations = [calibration() for _ in range(2)]
    keys = [PointKey(model, b, s, threads=threads) for model, b, s in POINTS]
    configs = {model: PRESETS[model].to_config() for model, _, _ in POINTS}
    timer = ProcessCpuTimer() if cpu_time else None
    records = sweep(keys, configs, rounds=rounds, log=stderr_log, timer=timer)
    return {
        "machine": machine(),
        "threads": threads,
        "timer": "process_cpu" if cpu_time else "wall",
        "calibrations": calibrations,
        "points": records,
    }


def report(data: dict[str, Any]) -> str:
    records = [r for c in data["calibrations"] for r in c["probes"]]
    after = params_from(median_probe_records(records))
    before = without_new_terms(after)
    lines = [
        f"threads {data.get('threads', 2)}, timer {data.get('timer', 'wall')}, "
        f"load {data['machine'].get('load_average')}",
        f"first touch {after.first_touch_seconds_per_byte} s/B, tanh "
        f"{after.tanh_elements_per_second} /s, exp {after.exp_elements_per_second} /s",
        "| point | measured s | before: predicted s, error | after: predicted s, error |",
        "|---|---|---|---|",
    ]
    errors: dict[str, list[float]] = {"before": [], "after": []}
    for point in data["points"]:
        model, b, s = point["model"], point["batch_size"], point["seq_len"]
        measured = point["latency_seconds"]
        cells = []
        for label, params in (("before", before), ("after", after)):
            predicted = predict(PRESETS[model], params, b, s, "float32").latency_seconds
            error = predicted / measured - 1.0  # on throughput, as everywhere
            errors[label].append(abs(error))
            cells.append(f"{predicted:.3f}, {error:+.0%}")
        lines.append(f"| {model} {b}×{s} | {measured:.3f} | {cells[0]} | {cells[1]} |")
    for label, values in errors.items():
        lines.append(f"MAPE {label}: {sum(values) / len(values):.1%}")
    return "\n".join(lines)


def page_faults(points: Sequence[tuple[str, int, int]] = FAULT_POINTS) -> str:
    """Minor page faults of one forward (after a warm-up) against the bytes the model charges
    first touch for: the check that the 32 MiB threshold picks the outputs that really fault."""
    import resource
    import time

    import torch
    from scaleprobe.models.costs import forward_cost
    from scaleprobe.models.predict import FRESH_MAPPING_MIN_BYTES
    from transformers import AutoConfig, AutoModel

    page = resource.getpagesize()
    lines = [
        f"threads {torch.get_num_threads()}",
        "| point | forward s | system s | faulted MB | model: fresh outputs ≥ 32 MiB, MB |",
        "|---|---|---|---|---|",
    ]
    models: dict[str, Any] = {}
    for name, b, s in points:
        if name not in models:
            config = AutoConfig.for_model(**PRESETS[name].to_config())
            models[name] = AutoModel.from_config(config).eval()
        ids = torch.randint(5, 1000, (b, s))
        with torch.inference_mode():
            models[name](input_ids=ids)
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            models[name](input_ids=ids)
            seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
        cost = forward_cost(PRESETS[name], b, s, "float32")
        charged = sum(
            x for k in cost.kernels for x in k.fresh_output_bytes if x >= FRESH_MAPPING_MIN_BYTES
        )
        faulted = (after.ru_minflt - before.ru_minflt) * page
        lines.append(
            f"| {name} {b}×{s} | {seconds:.2f} | {after.ru_stime - before.ru_stime:.2f} | "
            f"{faulted / 1e6:.0f} | {charged / 1e6:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time")
    parser.add_argument("--out", metavar="FILE.json")
    parser.add_argument("--load", metavar="FILE.json")
    parser.add_argument("--faults", action="store_true", help="count page faults per forward")
    args = parser.parse_args(argv)
    if args.faults:
        print(page_faults())
        return 0
    data = read_json(args.load) if args.load else measure(args.rounds, args.threads, args.cpu_time)
    if args.out:
        write_json(args.out, data)
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
