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
    python bench/large_activations.py --faults --tuned-malloc --repeats 3   # and with glibc tuned

``--cpu-time`` times the forwards by process CPU time (page faults' system time included): with
one torch thread that is the forward's own time, which other processes on a shared machine
barely disturb, where wall time under load says little.

``--tuned-malloc`` runs the ``--faults`` check twice, each in a fresh process: with glibc's
defaults, and with ``TUNED_MALLOC_ENV`` (nothing above 4 GiB is mmap'd, nothing is trimmed), which
keeps freed outputs in the heap for the next forward. The difference is what the page faults of a
forward's large outputs cost, and what a server on glibc could win by setting those variables.
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
    PAGE_BYTES,
    PointKey,
    ProcessCpuTimer,
    calibration,
    load_or_measure,
    machine,
    stderr_log,
    sweep,
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
    ("bigbird-roberta-base", 4, 512),
    ("bigbird-roberta-base", 16, 256),
    ("bigbird-roberta-base", 16, 512),
    ("bert-base", 16, 128),
    ("bert-base", 16, 512),
)
# glibc's malloc: serve every allocation below 4 GiB from the heap and never give freed memory
# back to the kernel, so a forward's large outputs reuse pages an earlier forward faulted in.
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(4 * 1024**3),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024**3),
    "MALLOC_TOP_PAD_": str(1024**3),
}


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


def page_faults(points: Sequence[tuple[str, int, int]] = FAULT_POINTS, repeats: int = 1) -> str:
    """Minor page faults of a forward (after a warm-up; the median over ``repeats``) against the
    bytes the model charges first touch for: the check that the 32 MiB threshold picks the
    outputs that really fault."""
    import resource
    import statistics
    import time

    import torch
    from scaleprobe.models.costs import forward_cost
    from scaleprobe.models.predict import fresh_mapped_bytes
    from transformers import AutoConfig, AutoModel

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
        samples = []
        with torch.inference_mode():
            models[name](input_ids=ids)
            for _ in range(repeats):
                before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                models[name](input_ids=ids)
                seconds = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_SELF)
                system = after.ru_stime - before.ru_stime
                samples.append((seconds, system, (after.ru_minflt - before.ru_minflt) * PAGE_BYTES))
        columns = zip(*samples, strict=True)
        seconds, system, faulted = (statistics.median(column) for column in columns)
        cost = forward_cost(PRESETS[name], b, s, "float32")
        charged = sum(fresh_mapped_bytes(k) for k in cost.kernels)
        lines.append(
            f"| {name} {b}×{s} | {seconds:.2f} | {system:.2f} | "
            f"{faulted / 1e6:.0f} | {charged / 1e6:.0f} |"
        )
    return "\n".join(lines)


def env_text() -> str:
    return " ".join(f"{k}={v}" for k, v in TUNED_MALLOC_ENV.items())


def fault_points(text: str) -> tuple[tuple[str, int, int], ...]:
    """``bert-base:16x512,bigbird-roberta-base:4x512`` → the points."""
    points = []
    for item in filter(None, text.split(",")):
        try:
            name, shape = item.split(":")
            b, s = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not MODEL:BxS") from None
        if name not in PRESETS or b < 1 or s < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: unknown model or a size below 1")
        points.append((name, b, s))
    return tuple(points)


def fault_check_in_child(
    points: Sequence[tuple[str, int, int]], threads: int, repeats: int, extra_env: dict[str, str]
) -> str:
    """``--faults`` in a fresh process with ``extra_env`` (glibc reads it at start-up only)."""
    import os
    import subprocess

    listed = ",".join(f"{name}:{b}x{s}" for name, b, s in points)
    command = [sys.executable, __file__, "--faults", "--points", listed]
    command += ["--threads", str(threads), "--repeats", str(repeats)]
    done = subprocess.run(
        command, env={**os.environ, **extra_env}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fault check failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time")
    parser.add_argument("--out", metavar="FILE.json")
    parser.add_argument("--load", metavar="FILE.json")
    parser.add_argument("--faults", action="store_true", help="count page faults per forward")
    parser.add_argument(
        "--repeats", type=int, default=1, help="--faults: timed forwards per point (median)"
    )
    parser.add_argument(
        "--points",
        type=fault_points,
        default=FAULT_POINTS,
        metavar="MODEL:BxS,...",
        help="--faults: the points (default: large BigBird and BERT points)",
    )
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="--faults: run the check with glibc's defaults and with TUNED_MALLOC_ENV, each in a "
        "fresh process",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.faults and args.tuned_malloc:
        for label, extra in (("glibc defaults", {}), ("tuned: " + env_text(), TUNED_MALLOC_ENV)):
            print(f"## {label}")
            print(fault_check_in_child(args.points, args.threads, args.repeats, extra), flush=True)
        return 0
    if args.faults:
        import torch

        torch.set_num_threads(args.threads)
        print(page_faults(args.points, repeats=args.repeats))
        return 0
    return load_or_measure(
        "large_activations",
        args.load,
        args.out,
        lambda: measure(args.rounds, args.threads, args.cpu_time),
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
